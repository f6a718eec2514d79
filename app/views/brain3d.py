"""Brain3D page: make a 3-D object from one fMRI trial (or an image) and look at its mesh, turntable and inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from neuroattn.errors import NeuroattnError
from neuroattn.web.brain3d_page import (
    PRESETS,
    Brain3DOutput,
    check_fmri_upload,
    conditioning_rows,
    find_brain3d_outputs,
    generate_object,
    new_output_folder,
    open_output,
    save_fmri_upload,
    save_image_upload,
    subject_test_trials,
    untrained_warning,
    write_trial_betas,
)
from neuroattn.web.decode_page import DecodeRunEntry, enlarge, find_decode_runs
from neuroattn.web.mesh_viewer import mesh_figure
from neuroattn.web.ui import app_settings, download_file, guarded, progress_bar, show_error, upload_folder

SOURCES = ("Test trial", "Upload betas", "Upload image")
PRESET_HELP = ["about a second per object; rough shapes", "seconds to a minute per object on a CPU"]


def _saved_upload(upload: Any, kind: str, run: DecodeRunEntry | None, subject: str | None) -> Path:
    """Save (once per file) and check this session's upload; returns its path in the upload folder."""
    signature = f"{kind} {upload.file_id} {None if run is None else run.path} {subject}"
    cache: dict[str, Path] = st.session_state.setdefault("b3_uploads", {})
    if signature not in cache:
        folder, limit = upload_folder(), app_settings().max_upload_mb
        if kind == "image":
            path = save_image_upload(upload.getvalue(), upload.name, folder, max_mb=limit)
        else:
            path = save_fmri_upload(upload.getvalue(), upload.name, folder, max_mb=limit)
            if run is not None and subject is not None:
                check_fmri_upload(app_settings(), run, subject, path)
        cache.clear()  # one upload at a time per session
        cache[signature] = path
    return cache[signature]


@st.cache_data(max_entries=8, show_spinner=False)
def _figure(mesh_path: str, stamp: float, title: str) -> Any:
    return mesh_figure(mesh_path, title)


st.title("Brain3D: a 3-D object from fMRI")
settings = app_settings()
st.caption("The low-level visual areas (V1-V4) decode a coarse reference image, the higher areas a CLIP "
           "embedding; a radiance field is fitted to the reference view under guidance from an image-variation "
           "model, then refined into a watertight mesh.")

runs = find_decode_runs(settings)
with st.expander("Generate a new object", expanded=True):
    run: DecodeRunEntry | None = None
    subject: str | None = None
    if runs:
        run_labels = {e.label((settings.runs, *settings.data_roots)): e for e in runs}
        run = run_labels[st.selectbox("Decoding run", list(run_labels), key="b3_run")]
        subject = st.selectbox("Subject", run.subjects, key="b3_subject")
        sources = list(SOURCES)
    else:
        st.info(f"No decoding runs under `{settings.runs}`: train one on the Decode page (or `neuroattn decode "
                "train`) to decode fMRI; an uploaded image works without one.")
        sources = [SOURCES[2]]
    source = st.radio("Input", sources, horizontal=True, key="b3_source")
    fmri: Path | None = None
    image: Path | None = None
    stem = "object"
    try:
        if source == SOURCES[0] and run is not None and subject is not None:
            trials = {t.label(): t for t in subject_test_trials(settings, run, subject)}
            trial = trials[st.selectbox(f"Test trial of {subject}", list(trials), key="b3_trial")]
            fmri = write_trial_betas(settings, run, subject, trial.trial, upload_folder())
            stem = f"{subject}-trial{trial.trial}"
        elif source == SOURCES[1]:
            upload = st.file_uploader(f"Betas of one trial of {subject}: .npy of shape (V,) or (1, V), or a NIfTI",
                                      type=["npy", "nii", "gz"], key="b3_upload_betas")
            if upload is not None:
                fmri = _saved_upload(upload, "betas", run, subject)
                stem = f"{subject}-{Path(fmri.name).stem}"
        else:
            upload = st.file_uploader("Image (PNG or JPEG) of one object", type=["png", "jpg", "jpeg"],
                                      key="b3_upload_image")
            if upload is not None:
                image = _saved_upload(upload, "image", run, subject)
                stem = Path(image.name).stem
    except NeuroattnError as exc:
        show_error(exc)
        fmri = image = None
    preset = st.radio("Settings", PRESETS, horizontal=True, key="b3_preset", captions=PRESET_HELP)
    ready = fmri is not None or image is not None
    if st.button("Generate", type="primary", key="b3_generate", disabled=not ready):
        with guarded(), progress_bar("generating the object"):
            result = generate_object(settings, preset, new_output_folder(settings, stem), run=run,
                                     subject=subject, fmri=fmri, image=image)
            st.session_state["b3_made"] = str(result.out.resolve())
            st.success(f"Wrote {result.out}")

outputs = find_brain3d_outputs(settings)
if not outputs:
    st.info(f"No Brain3D objects under `{settings.workspace}` yet: generate one above, or run `neuroattn brain3d "
            f"generate --out {settings.outputs / 'brain3d' / 'my-object'}`.")
    st.stop()
labels = {e.label(settings.workspace): e for e in outputs}
made = st.session_state.pop("b3_made", None)
if made is not None:  # a new object: show it
    st.session_state["b3_output"] = next((k for k, e in labels.items() if str(e.path.resolve()) == made), None)
st.subheader("Objects")
entry = labels[st.selectbox("Brain3D object", list(labels), key="b3_output")]
shown: Brain3DOutput | None = None
with guarded():
    shown = open_output(settings, entry.path)
if shown is None:
    st.stop()

warning = untrained_warning(shown.record)
if warning:
    st.warning(warning, icon=":material/warning:")
tag = " · UNTRAINED" if warning else ""
mesh_stats = shown.record.get("mesh", {})
st.caption(f"{mesh_stats.get('vertices')} vertices · {mesh_stats.get('faces')} faces · "
           f"{'watertight' if mesh_stats.get('watertight') else 'not watertight'} · "
           f"{shown.record.get('timings_s', {}).get('total', float('nan')):.1f} s · `{shown.path}`")

with guarded():
    figure = _figure(str(shown.mesh), shown.mesh.stat().st_mtime, f"{shown.path.name}{tag}")
    st.plotly_chart(figure, key="b3_mesh", config={"displaylogo": False})
col_turn, col_ref = st.columns(2)
col_turn.image(str(shown.turntable), caption=f"turntable{tag}", width="stretch")
with guarded():
    from neuroattn.brain3d.pipeline import read_image

    reference = (read_image(shown.reference).transpose(1, 2, 0) * 255).round().astype("uint8")  # (H, W, 3)
    col_ref.image(enlarge(reference, 256), caption=f"reference image (decoded from fMRI or given){tag}",
                  width="stretch")

st.markdown("**Conditioning**")
st.dataframe(conditioning_rows(shown.record), key="b3_conditioning", hide_index=True)
for path, mime in shown.downloads:
    download_file(f"Download {path.name}", path, key=f"b3_dl_{path.name.replace('.', '_')}", mime=mime)
