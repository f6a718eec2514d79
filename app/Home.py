"""neuroattn web app: the entry script; it sets up navigation over the page registry and shows Home."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from neuroattn.web.pages import registered_pages

APP_DIR = Path(__file__).resolve().parent


def main() -> None:
    st.set_page_config(page_title="neuroattn", layout="wide")
    home = st.Page(str(APP_DIR / "views" / "home.py"), title="Home", icon=":material/home:", default=True)
    pages = [home] + [st.Page(str(APP_DIR / p.script), title=p.title, icon=p.icon, url_path=p.key)
                      for p in registered_pages()]
    st.navigation(pages).run()


main()
