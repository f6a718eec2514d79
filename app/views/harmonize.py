"""Harmonize page: pick (or train) a harmonizer, give it a scan, see before/after and download the result."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from neuroattn.harmonize.base import BaseHarmonizer
from neuroattn.io.manifest import nifti_stem
from neuroattn.io.nifti import load_volume, save_volume
from neuroattn.web.figures import default_window, difference_window
from neuroattn.web.runs import DEMO_SIZES, train_demo_harmonizer
from neuroattn.web.ui import (
    app_settings,
    checkpoint_picker,
    download_file,
    guarded,
    progress_bar,
    show_slices,
    upload_folder,
    volume_input,
)


@st.cache_resource(max_entries=4)
def _load_harmonizer(path: str, stamp: float) -> BaseHarmonizer:
    harmonizer = BaseHarmonizer.load(path)
    harmonizer.progress = False
    return harmonizer


st.title("Harmonize a scan")
settings = app_settings()

with st.expander("No checkpoint yet? Train the demo model on a simulated two-site cohort"):
    size = st.radio("size", DEMO_SIZES, horizontal=True, key="harm_demo_size",
                    captions=["about a minute; for trying the app, output not meaningful",
                              "about ten minutes on two CPU cores; the `neuroattn demo` model"])
    if st.button("Train the demo model", key="harm_train_demo"):
        with guarded(), progress_bar("training the demo model"):
            entry = train_demo_harmonizer(settings.runs, size)
            st.success(f"Saved {entry.path}")

entry = checkpoint_picker("harm_checkpoint", "train the demo model above.")
sources = [s for s in entry.sites if s != entry.target_site] or list(entry.sites)
site = st.selectbox(f"Site the scan comes from (output is on {entry.target_site}'s scale)", sources, key="harm_site")

modalities = list(entry.modalities) or [""]
volumes = {}
for modality in modalities:
    volume = volume_input(f"{modality or 'Scan'} (3-D NIfTI)", key=f"harm_in_{modality or 'scan'}", ndim=3)
    if volume is not None:
        volumes[modality] = volume
missing = [m or "scan" for m in modalities if m not in volumes]
if missing:
    st.info(f"This model takes {', '.join(m or 'one scan' for m in modalities)} together; still needed: "
            f"{', '.join(missing)}.")
elif st.button("Harmonize", type="primary", key="harm_run"):
    with guarded(), progress_bar("harmonizing"):
        shapes = {v.shape for v in volumes.values()}
        if len(shapes) > 1:
            raise_shapes = ", ".join(f"{m}: {v.shape}" for m, v in volumes.items())
            st.error(f"modalities have different shapes ({raise_shapes}); resample them onto one grid first")
            st.stop()
        harmonizer = _load_harmonizer(str(entry.path), (entry.path / "config.json").stat().st_mtime)
        outputs = harmonizer.transform([v.data for v in volumes.values()], [site] * len(volumes),
                                       subjects=["upload"] * len(volumes), modalities=list(volumes))
        out_dir = settings.outputs / "harmonize" / upload_folder().name
        written = {}
        for (modality, volume), data in zip(volumes.items(), outputs, strict=True):
            name = nifti_stem(volume.path.name if volume.path else modality) + "_harmonized.nii.gz"
            written[modality] = str(save_volume(volume.with_data(data), out_dir / name))
        st.session_state["harm_result"] = {"checkpoint": str(entry.path), "site": site, "outputs": written,
                                           "trained": entry.trained}

result = st.session_state.get("harm_result")
if result and result["checkpoint"] == str(entry.path) and set(result["outputs"]) == set(volumes):
    st.subheader("Before and after")
    if not result["trained"]:
        st.warning("Made with an UNTRAINED checkpoint.")
    for modality, out_path in result["outputs"].items():
        before = volumes[modality].data
        after = load_volume(out_path, ndim=3).data
        label = modality or "scan"
        show_slices(f"{label} · before ({result['site']})", before, default_window(before), "gray", "before")
        show_slices(f"{label} · after (on {entry.target_site}'s scale)", after, default_window(after), "gray", "after")
        diff, window = difference_window(before, after)
        show_slices("difference (after − before)", diff, window, "RdBu_r", "difference")
        download_file(f"Download {Path(out_path).name}", Path(out_path), key=f"harm_dl_{modality or 'scan'}",
                      mime="application/gzip")
