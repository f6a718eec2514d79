"""Encode page: pick an encoding run and ROIs, see test accuracy, text-query selectivity maps and voxel captions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from neuroattn.encode.runs import RUN_INFO, EncodeRun
from neuroattn.errors import NeuroattnError
from neuroattn.web.decode_page import enlarge
from neuroattn.web.encode_page import (
    VoxelDescription,
    accuracy_rows,
    describe_voxel,
    escape_markdown,
    find_encode_runs,
    grid_volume,
    held_out_accuracy,
    open_encode_run,
    peak_index,
    reliable_columns,
    restrict,
    roi_choices,
    roi_columns,
    roi_name,
    save_selectivity,
    text_map,
    voxel_label,
    world_mm,
)
from neuroattn.web.settings import AppSettings
from neuroattn.web.ui import app_settings, download_file, guarded, show_error, show_slices, upload_folder

MAP_CMAP = "RdBu_r"  # diverging: negative blue, positive red, 0 white
MAX_CACHED = 16  # text maps and voxel descriptions kept per browser session


@st.cache_resource(max_entries=4)
def _open(_settings: AppSettings, run_dir: str, stamp: float) -> EncodeRun:
    return open_encode_run(_settings, Path(run_dir))


def _session_cache(name: str) -> dict[str, object]:
    cache: dict[str, object] = st.session_state.setdefault(name, {})
    if len(cache) > MAX_CACHED:
        cache.pop(next(iter(cache)))
    return cache


def _symmetric(values: np.ndarray) -> tuple[float, float]:
    bound = float(np.abs(values).max()) or 1.0
    return -bound, bound


st.title("Encode: predict visual cortex from images and words")
settings = app_settings()

runs = find_encode_runs(settings)
roots = (settings.runs, *settings.data_roots)
run_labels = {e.label(roots): e for e in runs}
if runs:
    entry = run_labels[st.selectbox("Encoding run", list(run_labels), key="enc_run")]
else:
    entry = None
    st.info(f"No encoding runs under `{settings.runs}` or the data roots: run `neuroattn encode fit --data DATA "
            f"--model ridge --out {settings.runs / 'my-run'}`, or open a run folder by its path below.")
typed = st.text_input("Or open a run folder by its path (inside the workspace or a data root; relative paths start "
                      "at the workspace)", key="enc_path")
run_dir = (settings.workspace / Path(typed.strip()).expanduser() if typed.strip()  # relative: to the workspace
           else entry.path if entry is not None else None)
if run_dir is None:
    st.stop()
try:
    info_file = run_dir / RUN_INFO
    run = _open(settings, str(run_dir), info_file.stat().st_mtime if info_file.is_file() else 0.0)
except NeuroattnError as exc:
    show_error(exc)
    st.stop()

untrained = run.untrained_parts()
if untrained:
    st.warning(f"UNTRAINED: {', '.join(untrained)} use random weights; the maps, accuracies and captions below "
               "show that the pipeline works, not what visual cortex prefers.", icon=":material/warning:")
tag = " · UNTRAINED" if untrained else ""
st.caption(f"{run.encoder.model} encoder of {run.subject.name} · {len(run.encoder.voxels)} voxels · "
           f"{run.data.features.dim}-dimensional image embedding · data `{run.data.root}`")

names = roi_choices(run)
rois = st.multiselect("ROIs", names, default=[], key="enc_rois", placeholder="every ROI",
                      help="Keep the voxels of these ROIs in the maps, tables and voxel picker (empty: every voxel).")
columns = roi_columns(run, rois)
st.metric("Voxels shown", len(columns))
if len(columns) == 0:
    st.info("The chosen ROIs hold none of this run's voxels.")
    st.stop()
out_dir = settings.outputs / "encode" / upload_folder().name
run_key = f"{run.path}|{run.path.joinpath(RUN_INFO).stat().st_mtime}"

accuracy_cache = _session_cache("enc_accuracy")
if run_key not in accuracy_cache:
    with guarded():  # e.g. a subject without test images: the page lives on without accuracies
        accuracy_cache[run_key] = held_out_accuracy(run)
r: np.ndarray = accuracy_cache.get(run_key, np.full(len(run.encoder.voxels), np.nan))  # type: ignore[assignment]

tab_query, tab_accuracy, tab_voxels = st.tabs(["Text query", "Test accuracy", "Voxel captions"])

with tab_query:
    st.caption("A text query goes through CLIP's text encoder into the encoders' embedding space; each voxel's "
               "encoder then predicts its response to it, a map of where the words should drive cortex.")
    text = st.text_input("Text query", key="enc_query", placeholder="e.g. a photo of a horse")
    if text.strip():
        maps = _session_cache("enc_maps")
        map_key = f"{run_key}|{text.strip()}"
        values: np.ndarray | None = None
        with guarded():
            if map_key not in maps:
                maps[map_key] = text_map(run, text)
            values = maps[map_key]  # type: ignore[assignment]
        if values is not None:
            shown = restrict(values, columns)
            show_slices(f"Predicted response to '{text.strip()}'{tag}", grid_volume(run, shown), _symmetric(shown),
                        MAP_CMAP, "through the peak voxel", index=peak_index(run, shown))
            order = columns[np.argsort(-values[columns], kind="stable")[:10]]
            st.markdown("**Voxels the query drives most**")
            st.dataframe({"voxel": [int(run.encoder.voxels[c]) for c in order],
                          "roi": [roi_name(run, c) for c in order],
                          "predicted response": [float(values[c]) for c in order]}, key="enc_top_voxels")
            with guarded():
                path = save_selectivity(run, text.strip(), values, rois, out_dir)
                download_file(f"Download {path.name}", path, key="enc_dl_map", mime="application/gzip")

with tab_accuracy:
    st.caption("Pearson r between the encoder's predictions and the subject's measured, repeat-averaged responses "
               f"to {len(run.subject.test_ids)} held-out test images, per voxel.")
    st.dataframe(accuracy_rows(run, r, columns), key="enc_accuracy_table")
    shown_r = np.nan_to_num(restrict(r, columns))
    show_slices(f"Test accuracy (r){tag}", grid_volume(run, shown_r), _symmetric(shown_r), MAP_CMAP,
                "through the best-predicted voxel", index=peak_index(run, np.where(shown_r > 0, shown_r, 0)))

with tab_voxels:
    st.caption("LaVCa: the voxel's encoder picks its top images among the stimuli (test images kept out); their "
               "captions give keywords, and the keywords one sentence.")
    picked = reliable_columns(run, columns, r)
    labels = {voxel_label(run, int(c), r): int(c) for c in picked}
    column = labels[st.selectbox(f"Voxel (the {len(picked)} most reliable of the ROIs shown)", list(labels),
                                 key="enc_voxel")]
    x, y, z = world_mm(run, column)
    st.caption(f"At ({x:.0f}, {y:.0f}, {z:.0f}) mm · test r {r[column]:.3f}")
    described = _session_cache("enc_captions")
    voxel_key = f"{run_key}|{column}"
    if voxel_key not in described and st.button("Describe this voxel", type="primary", key="enc_describe"):
        with guarded(), st.spinner("captioning the voxel's top images"):
            described[voxel_key] = describe_voxel(run, column)
    description: VoxelDescription | None = described.get(voxel_key)  # type: ignore[assignment]
    if description is not None:
        st.markdown(f"#### {escape_markdown(description.sentence)}")
        st.markdown("**Keywords:** " + escape_markdown(", ".join(description.keywords) or "(none)"))
        st.markdown("**Caption of the single best image:** " + escape_markdown(description.top_caption))
        if untrained:
            st.caption(f"UNTRAINED ({', '.join(untrained)}): the description follows random features.")
        images = run.data.stimuli.images
        st.image([enlarge(images[i], 96) for i in description.top_ids],
                 caption=[f"image {int(i)} · {float(v):.2f}"
                          for i, v in zip(description.top_ids, description.top_responses, strict=True)])
