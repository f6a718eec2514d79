"""Cohort page: harmonize a whole cohort with a live per-subject status table, resume, zip and evaluate."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from neuroattn.errors import NeuroattnError
from neuroattn.harmonize.assessment import evaluate_outputs
from neuroattn.io.cohort import read_cohort
from neuroattn.web.cohort import load_cohort_source, rebase_manifest, run_cohort, zip_folder
from neuroattn.web.ui import (
    app_settings,
    checkpoint_picker,
    download_file,
    guarded,
    progress_bar,
    show_error,
    upload_folder,
)

st.title("Harmonize a cohort")
settings = app_settings()
entry = checkpoint_picker("cohort_checkpoint", "train one on the Harmonize page first.")

roots = settings.readable_roots
kind = st.radio("Cohort", ["Server folder or manifest", "Upload a manifest CSV"], horizontal=True, key="cohort_kind")
source: Path | None = None
try:
    if kind == "Server folder or manifest":
        st.caption("A BIDS folder, a folder with manifest.csv, a BraTS-style folder, a folder of NIfTI files, or a "
                   "manifest CSV — inside " + ", ".join(f"`{r}`" for r in roots))
        text = st.text_input("Path on the server", key="cohort_path", placeholder=str(settings.workspace / "cohort"))
        if text:
            load_cohort_source(Path(text), roots)
            source = Path(text).resolve()
    else:
        base = st.selectbox("Relative paths in the CSV are below", [str(r) for r in roots], key="cohort_base")
        uploaded = st.file_uploader("Manifest CSV (columns path, site, subject[, session, modality, mask])",
                                    type=["csv", "tsv"], key="cohort_csv")
        if uploaded is not None:
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(uploaded.name).name)
            csv = rebase_manifest(uploaded.getvalue(), name, Path(base), upload_folder() / name)
            load_cohort_source(csv, (*roots, upload_folder()))
            source = csv
except NeuroattnError as exc:
    show_error(exc)
    source = None

if source is None:
    st.stop()
manifest = load_cohort_source(source, (*roots, upload_folder()))
st.success(f"{len(manifest)} scans · sites {', '.join(manifest.sites)} · {len(manifest.subjects)} subjects")

default_name = re.sub(r"[^A-Za-z0-9_-]+", "-", f"{source.stem}-{entry.run.name}").strip("-")
name = st.text_input("Output folder name (under outputs/cohort)", value=default_name, key="cohort_name")
out_dir = settings.outputs / "cohort" / (re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "run")
resume = st.checkbox("Resume: skip subjects already finished in this folder", value=True, key="cohort_resume")

if st.button("Harmonize cohort", type="primary", key="cohort_run"):
    table = st.empty()
    with guarded(), progress_bar("harmonizing subjects"):
        report = run_cohort(entry.path, source, out_dir, resume=resume,
                                          on_update=lambda frame: table.dataframe(frame, hide_index=True))
        st.session_state["cohort_result"] = {"out": str(out_dir), "source": str(source),
                                             "failed": len(report.failed), "checkpoint": str(entry.path)}

result = st.session_state.get("cohort_result")
if result and result["out"] == str(out_dir):
    if result["failed"]:
        st.error(f"{result['failed']} subject visit(s) failed; reasons in failures.csv (the others finished).")
        download_file("Download failures.csv", out_dir / "failures.csv", key="cohort_failures", mime="text/csv")
    else:
        st.success(f"Every subject harmonized into `{out_dir}`.")
    if st.button("Evaluate (MMD, domain classifier, vs ground truth when present)", key="cohort_eval"):
        with guarded(), progress_bar("evaluating"):
            files = evaluate_outputs(read_cohort(result["source"]), {"harmonized": out_dir}, out_dir / "evaluation",
                                     reference_site=entry.target_site, n_permutations=200, progress=False,
                                     trained={"harmonized": entry.trained})
            st.session_state["cohort_report"] = str(files.report_html)
    report_html = st.session_state.get("cohort_report")
    if report_html and Path(report_html).is_relative_to(out_dir) and Path(report_html).is_file():
        st.success("Evaluation written; open it on the Report page or download it.")
        download_file("Download report.html", Path(report_html), key="cohort_report_dl", mime="text/html")
    if st.button("Prepare a zip of all outputs", key="cohort_zip_make"):
        with guarded():
            st.session_state["cohort_zip_path"] = str(zip_folder(out_dir, out_dir.with_suffix(".zip")))
    archive = st.session_state.get("cohort_zip_path")
    if archive and archive == str(out_dir.with_suffix(".zip")) and Path(archive).is_file():
        download_file(f"Download all outputs ({Path(archive).stat().st_size / 2**20:.1f} MB zip)", Path(archive),
                      key="cohort_zip", mime="application/zip")
