"""Decode page: pick (or train) a decoding run, give it fMRI betas, see the retrieved images and reconstructions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from neuroattn.errors import NeuroattnError
from neuroattn.web.decode_page import (
    QUICK_MODELS,
    OpenRun,
    Retrieval,
    enlarge,
    find_data_folders,
    find_decode_runs,
    load_generator,
    open_run,
    reconstruct,
    retrieval_rows,
    retrieve,
    save_betas_upload,
    save_reconstructions,
    simulate_demo_data,
    simulated_trials,
    train_quick_decoder,
    trial_betas,
    uploaded_betas,
    write_retrieval_csv,
)
from neuroattn.web.settings import AppSettings
from neuroattn.web.ui import app_settings, download_file, guarded, progress_bar, show_error, upload_folder

MAX_SHOWN = 8  # queries shown (and reconstructed) from a multi-row upload; the CSV holds every row


@st.cache_resource(max_entries=4)
def _open(_settings: AppSettings, run_dir: str, subject: str, stamp: float) -> OpenRun:
    return open_run(_settings, Path(run_dir), subject)


def _uploaded(run: OpenRun, upload: Any, mask: Any) -> tuple[np.ndarray, str]:
    """Betas (N, V) of this session's upload (read once per file) and a signature naming the input."""
    signature = f"upload {run.path} {run.subject} {upload.file_id} {None if mask is None else mask.file_id}"
    cache: dict[str, np.ndarray] = st.session_state.setdefault("dec_uploads", {})
    if signature not in cache:
        folder, limit = upload_folder(), app_settings().max_upload_mb
        betas_path = save_betas_upload(upload.getvalue(), upload.name, folder, max_mb=limit)
        mask_path = None if mask is None else save_betas_upload(mask.getvalue(), mask.name, folder, max_mb=limit)
        cache.clear()  # one upload at a time per session
        cache[signature] = uploaded_betas(run, betas_path, mask_path)
    return cache[signature], signature


@st.cache_resource(max_entries=2)
def _generator(data_root: str) -> Any:
    return load_generator(Path(data_root))


st.title("Decode images from fMRI")
settings = app_settings()

with st.expander("No decoding run yet? Simulate demo data and train a quick decoder"):
    st.caption("The demo data take about two minutes on two CPU cores; they use a tiny random CLIP, so every "
               "result from them is UNTRAINED.")
    if st.button("Simulate demo data", key="dec_simulate"):
        with guarded(), progress_bar("simulating the demo data"):
            st.success(f"Wrote {simulate_demo_data(settings)}")
    folders = find_data_folders(settings)
    if folders:
        labels = {str(p): p for p in folders}
        folder = labels[st.selectbox("Data folder", list(labels), key="dec_data")]
        model = st.radio("Model", QUICK_MODELS, horizontal=True, key="dec_model",
                         captions=["under a minute", "tiny MindEye, about five minutes on two CPU cores"])
        if st.button("Train a quick decoder", key="dec_train"):
            with guarded(), progress_bar(f"training {model}"):
                st.success(f"Saved {train_quick_decoder(settings, folder, model)}")
    else:
        st.info("No decoding data folder in the workspace or the data roots yet: simulate the demo data.")

runs = find_decode_runs(settings)
if not runs:
    st.info(f"No decoding runs under `{settings.runs}` or the data roots: train a quick decoder above, or run "
            "`neuroattn decode train --out` into that folder.")
    st.stop()
run_labels = {e.label((settings.runs, *settings.data_roots)): e for e in runs}
entry = run_labels[st.selectbox("Decoding run", list(run_labels), key="dec_run")]
subject = st.selectbox("Subject", entry.subjects, key="dec_subject")
try:
    run = _open(settings, str(entry.path), subject, entry.modified)
except NeuroattnError as exc:
    show_error(exc)
    st.stop()

untrained = run.untrained_parts()
if untrained:
    st.warning(f"UNTRAINED: {', '.join(untrained)} use random weights; the retrieved images and reconstructions "
               "below say nothing about decoding quality.", icon=":material/warning:")

source = st.radio("Input", ["Simulated test trial", "Upload betas"], horizontal=True, key="dec_source")
betas: np.ndarray | None = None
seen: np.ndarray | None = None
signature = ""
if source == "Simulated test trial":
    trials = {t.label(): t for t in simulated_trials(run)}
    trial = trials[st.selectbox(f"Test trial of {run.subject}", list(trials), key="dec_trial")]
    average = st.checkbox("Average every repeat of this image", value=False, key="dec_average")
    betas, seen = trial_betas(run, trial, average), np.array([trial.image_id])
    signature = f"trial {trial.trial} {average}"
else:
    upload = st.file_uploader(f"Betas: .npy of shape ({run.n_voxels},) or (N, {run.n_voxels}), or a NIfTI",
                              type=["npy", "nii", "gz"], key="dec_upload")
    mask = st.file_uploader("Mask NIfTI selecting the betas' voxels (optional; default: the subject's mask)",
                            type=["nii", "gz"], key="dec_mask")
    if upload is not None:
        try:
            betas, signature = _uploaded(run, upload, mask)
        except NeuroattnError as exc:
            show_error(exc)

if betas is not None:
    out_dir = settings.outputs / "decode" / upload_folder().name
    st.subheader("Retrieved images")
    top_k = st.slider("Top-k among every stimulus", 1, min(20, len(run.data.stimuli)), 5, key="dec_topk")
    found: Retrieval | None = None
    with guarded():
        found = retrieve(run, betas, top_k, seen)
    if found is not None:
        images = run.data.stimuli.images
        for q in range(min(len(betas), MAX_SHOWN)):
            if len(betas) > 1:
                st.markdown(f"**Query {q}**")
            col_seen, col_found = st.columns([1, top_k])
            if seen is not None:
                col_seen.image(enlarge(images[seen[q]]), caption=f"seen · image {int(seen[q])}")
            else:
                col_seen.caption("seen image unknown (uploaded betas)")
            col_found.image([enlarge(images[i]) for i in found.ids[q]],
                            caption=[f"#{r + 1} · image {int(i)} · {s:.3f}" + (" ✓" if seen is not None
                                                                               and i == seen[q] else "")
                                     for r, (i, s) in enumerate(zip(found.ids[q], found.scores[q], strict=True))])
        if len(betas) > MAX_SHOWN:
            st.caption(f"Showing {MAX_SHOWN} of {len(betas)} queries; the CSV holds all of them.")
        csv_path = write_retrieval_csv(retrieval_rows(found, run.data.stimuli.sources), out_dir / "retrieval.csv",
                                       untrained)
        download_file("Download retrieval.csv", csv_path, key="dec_dl_csv", mime="text/csv")

    st.subheader("Reconstructions")
    col_steps, col_seed = st.columns(2)
    steps = col_steps.slider("Diffusion steps", 1, 50, 20, key="dec_steps")
    seed = int(col_seed.number_input("Seed", min_value=0, value=0, step=1, key="dec_seed"))
    shown = betas[:MAX_SHOWN]
    job = f"{run.path}|{run.subject}|{signature}|{steps}|{seed}"
    if st.button("Reconstruct", type="primary", key="dec_reconstruct"):
        with guarded(), progress_bar("reconstructing"):
            result = reconstruct(run, shown, _generator(str(run.data.root)), steps=steps, seed=seed)
            paths = save_reconstructions(result, out_dir / "reconstructions", seen, untrained)
            st.session_state["dec_result"] = {"job": job, "result": result, "paths": [str(p) for p in paths]}
    stored = st.session_state.get("dec_result")
    if stored and stored["job"] == job:
        result = stored["result"]
        if not result.generator_trained:
            st.warning(f"UNTRAINED image generator ({result.generator_source}): the reconstructions are noise.",
                       icon=":material/warning:")
        for q, image in enumerate(result.images):
            tiles = ([enlarge(run.data.stimuli.images[seen[q]])] if seen is not None else [])
            captions = ["seen"] if seen is not None else []
            if result.lowlevel is not None:
                tiles.append(enlarge(result.lowlevel[q]))
                captions.append("low-level path")
            st.image([*tiles, enlarge(image)], caption=[*captions, f"reconstruction {q}"])
        for p in map(Path, stored["paths"]):
            download_file(f"Download {p.name}", p, key=f"dec_dl_{p.stem}", mime="image/png")
