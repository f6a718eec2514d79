"""The web app's logic, kept out of the Streamlit pages so it is testable: settings, uploads, figures, jobs."""
