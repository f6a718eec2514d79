"""Report page: open an evaluation and read its metrics, baselines side by side, ablation and figures."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from neuroattn.errors import NeuroattnError
from neuroattn.web.reports import find_evaluations, load_evaluation
from neuroattn.web.ui import app_settings, download_file, show_error
from neuroattn.web.uploads import resolve_inside

st.title("Evaluation report")
settings = app_settings()
found = find_evaluations(settings.workspace)
choices = {str(p.relative_to(settings.workspace)): p for p in found}
picked = st.selectbox("Evaluation in the workspace", list(choices), index=0 if choices else None, key="report_pick",
                      placeholder="none found yet")
typed = st.text_input("…or the path of a metrics.json inside the allowed folders", key="report_path")
try:
    path = resolve_inside(Path(typed), settings.readable_roots) if typed else choices.get(picked) if picked else None
    evaluation = load_evaluation(path) if path is not None else None
except NeuroattnError as exc:
    show_error(exc)
    evaluation = None
if evaluation is None:
    st.info("Run an evaluation (Cohort page, `neuroattn harmonize evaluate`, or `neuroattn demo`) to see it here.")
    st.stop()

cohort = evaluation.metrics.get("cohort", {})
st.markdown(f"**{cohort.get('design', '')}** cohort · sites {', '.join(cohort.get('sites', []))} · reference "
            f"`{cohort.get('reference_site', '')}` · {len(cohort.get('subjects', []))} subjects · modalities "
            f"{', '.join(cohort.get('modalities', []))}")
for name in evaluation.untrained():
    st.warning(f"'{name}' was made by an UNTRAINED model.")
st.subheader("All methods side by side")
st.caption("PSNR/SSIM/Dice against ground truth (higher is better); MMD, domain accuracy, KS/Wasserstein between "
           "sites (lower is better); '_change' columns are relative to raw.")
st.dataframe(evaluation.table(), width="stretch")
ablation = evaluation.ablation()
if ablation is not None:
    st.subheader("Attention ablation")
    st.dataframe(ablation, width="stretch")
for figure in evaluation.figures:
    st.image(str(figure), caption=figure.name)
col_json, col_csv, col_html = st.columns(3)
with col_json:
    download_file("metrics.json", evaluation.metrics_json, key="report_json", mime="application/json")
csv = evaluation.metrics_json.with_suffix(".csv")
if csv.is_file():
    with col_csv:
        download_file("metrics.csv", csv, key="report_csv", mime="text/csv")
if evaluation.report_html is not None:
    with col_html:
        download_file("report.html", evaluation.report_html, key="report_html", mime="text/html")
    st.subheader("Full report")
    components.html(evaluation.report_html.read_text(), height=900, scrolling=True)
