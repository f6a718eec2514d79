"""Viewer page: orthogonal slices of a 3-D/4-D NIfTI, window, colormap, header, histogram, time course, compare."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from neuroattn.io.nifti import Volume
from neuroattn.web.figures import (
    COLORMAPS,
    VIEW_NAMES,
    default_window,
    difference_window,
    header_summary,
    histogram,
    slice_images,
    voxel_time_course,
)
from neuroattn.web.ui import show_slices, volume_input


def _frame(volume: Volume, t: int) -> np.ndarray:
    return volume.data[..., t] if volume.data.ndim == 4 else volume.data


st.title("Viewer")
volume = volume_input("NIfTI volume (.nii / .nii.gz, 3-D or 4-D)", key="viewer_main")
if volume is None:
    st.stop()

shape = volume.shape
st.success(f"Loaded {volume.path.name if volume.path else 'volume'} · {' × '.join(map(str, shape))}")
with st.sidebar:
    st.header("Display")
    t = st.slider("time frame", 0, shape[3] - 1, 0, key="viewer_t") if volume.data.ndim == 4 else 0
    data = _frame(volume, t)
    index = tuple(st.slider(f"{axis} slice ({name})", 0, n - 1, n // 2, key=f"viewer_{axis}")
                  for axis, name, n in zip("xyz", VIEW_NAMES, shape[:3], strict=True))
    lo0, hi0 = default_window(data)
    vmin, vmax = float(data.min()), float(data.max())
    if vmax <= vmin:
        vmax = vmin + 1.0
    window = st.slider("intensity window", vmin, vmax, (max(vmin, lo0), min(vmax, hi0)), key="viewer_window")
    cmap = st.selectbox("colormap", COLORMAPS, key="viewer_cmap")

show_slices("Slices", data, window, cmap, "main", index=index)

col_header, col_hist = st.columns(2)
with col_header:
    st.subheader("Header")
    st.table(pd.DataFrame({"value": [str(v) for v in header_summary(volume).values()]},
                          index=list(header_summary(volume))))
with col_hist:
    st.subheader("Histogram (non-zero voxels)")
    counts, centres = histogram(data)
    st.area_chart(pd.DataFrame({"voxels": counts}, index=pd.Index(centres, name="intensity")), height=300)

if volume.data.ndim == 4:
    st.subheader(f"Time course of voxel {index}")
    seconds, series = voxel_time_course(volume, index)  # type: ignore[arg-type]
    st.line_chart(pd.DataFrame({"signal": series}, index=pd.Index(seconds, name="time (s)")))

st.subheader("Compare with a second volume")
other = volume_input("Second volume (e.g. the harmonized scan)", key="viewer_other")
if other is not None:
    if other.shape[:3] != shape[:3]:
        st.error(f"{other.path.name if other.path else 'second volume'}: spatial shape {other.shape[:3]} differs "
                 f"from the first volume's {shape[:3]}")
    else:
        mode = st.radio("comparison", ["side by side", "overlay"], horizontal=True, key="viewer_mode")
        other_data = _frame(other, min(t, other.shape[3] - 1) if other.data.ndim == 4 else 0)
        if mode == "side by side":
            show_slices("Second volume", other_data, default_window(other_data), cmap, "second", index=index)
        else:
            alpha = st.slider("overlay opacity", 0.0, 1.0, 0.5, key="viewer_alpha")
            first = slice_images(data, index, window, "gray")
            second = slice_images(other_data, index, default_window(other_data), "hot")
            st.markdown("**Overlay**")
            for col, view in zip(st.columns(3), VIEW_NAMES, strict=True):
                blend = ((1 - alpha) * first[view] + alpha * second[view]).astype(np.uint8)
                col.image(blend, caption=f"{view} · overlay", width="stretch")
        diff, diff_window = difference_window(data, other_data)
        show_slices("Difference (second − first)", diff, diff_window, "RdBu_r", "difference", index=index)
