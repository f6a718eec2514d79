"""Decode page headless: a tiny simulated data folder and a ridge run; retrieval, uploads, reconstructions."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from app_test_support import APP_DIR, DecodeWorkspace, make_decode_workspace
from PIL import Image
from streamlit.testing.v1 import AppTest

from neuroattn.data.nsd import load_subject
from neuroattn.decode.clip_features import retrieval_targets
from neuroattn.decode.pipeline import SimulateSettings
from neuroattn.errors import InvalidInputError
from neuroattn.web.decode_page import (
    find_data_folders,
    find_decode_runs,
    open_run,
    save_betas_upload,
    simulated_trials,
    trial_betas,
)
from neuroattn.web.settings import load_settings

DECODE = str(APP_DIR / "views" / "decode.py")


@pytest.fixture(scope="module")
def decode_workspace(tmp_path_factory: pytest.TempPathFactory) -> DecodeWorkspace:
    return make_decode_workspace(tmp_path_factory.mktemp("decode_ws"))


@pytest.fixture
def decode_env(decode_workspace: DecodeWorkspace, monkeypatch: pytest.MonkeyPatch) -> DecodeWorkspace:
    monkeypatch.setenv("NEUROATTN_WORKSPACE", str(decode_workspace.root))
    monkeypatch.delenv("NEUROATTN_DATA_ROOTS", raising=False)
    monkeypatch.setenv("NEUROATTN_MAX_UPLOAD_MB", "1")
    return decode_workspace


def _page() -> AppTest:
    at = AppTest.from_file(DECODE, default_timeout=180).run()
    assert not at.exception
    return at


def _captions(at: AppTest) -> list[list[str]]:
    return [img.captions for img in at.image]


def _exact_top_k(ws: DecodeWorkspace, betas: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Float64 cosine top-k of the decoder's embeddings among every stimulus, without FAISS."""
    run = open_run(load_settings(ws.root, data_roots=[]), ws.run)
    query = run.decoder.brain_embeddings(betas).astype(np.float64)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    scores = query @ retrieval_targets(run.data.features).astype(np.float64).T  # (N, n_images)
    order = np.argsort(-scores, axis=1)[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_simulated_trial_shows_seen_image_and_exact_top_k(decode_env: DecodeWorkspace) -> None:
    at = _page()
    assert any("UNTRAINED" in w.value and "ridge decoder" in w.value and "CLIP" in w.value for w in at.warning)
    trial_box = at.selectbox(key="dec_trial")
    label = trial_box.options[7]
    trial_box.set_value(label).run()
    assert not at.exception and not at.error
    run = open_run(load_settings(decode_env.root, data_roots=[]), decode_env.run)
    trial = {t.label(): t for t in simulated_trials(run)}[label]
    captions = _captions(at)
    assert captions[0] == [f"seen · image {trial.image_id}"]
    retrieved = captions[1]
    assert len(retrieved) == 5
    ids, scores = _exact_top_k(decode_env, trial_betas(run, trial), 5)
    expected = [f"#{r + 1} · image {int(i)} · {s:.3f}" + (" ✓" if i == trial.image_id else "")
                for r, (i, s) in enumerate(zip(ids[0], scores[0], strict=True))]
    assert retrieved == expected
    csv_path = next((decode_env.root / "outputs" / "decode").rglob("retrieval.csv"))
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("# UNTRAINED:")
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[1:]))))
    assert [int(r["image_id"]) for r in rows] == [int(i) for i in ids[0]]
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores[0], atol=1e-4)
    assert {r["seen_image"] for r in rows} == {str(trial.image_id)}
    assert "Download retrieval.csv" in [d.label for d in at.get("download_button")]


def test_top_k_slider_and_averaged_repeats(decode_env: DecodeWorkspace) -> None:
    at = _page()
    at.slider(key="dec_topk").set_value(9).run()
    at.checkbox(key="dec_average").check().run()
    assert not at.exception and not at.error
    run = open_run(load_settings(decode_env.root, data_roots=[]), decode_env.run)
    trial = simulated_trials(run)[0]
    subject = run.data.subject(run.subject)
    repeats = subject.betas[subject.is_test & (subject.image_ids == trial.image_id)]
    assert len(repeats) == trial.repeats >= 2
    mean = trial_betas(run, trial, average=True)
    np.testing.assert_allclose(mean[0], repeats.astype(np.float64).mean(axis=0), atol=1e-6)
    ids, _ = _exact_top_k(decode_env, mean, 9)
    assert [c.split(" · ")[1] for c in _captions(at)[1]] == [f"image {int(i)}" for i in ids[0]]


def test_uploaded_raw_betas_retrieve_like_the_trial(decode_env: DecodeWorkspace) -> None:
    run = open_run(load_settings(decode_env.root, data_roots=[]), decode_env.run)
    trials = simulated_trials(run)[:3]
    raw = load_subject(decode_env.data, run.subject, zscore=False).betas[[t.trial for t in trials]]  # (3, V)
    buffer = io.BytesIO()
    np.save(buffer, raw)
    at = _page()
    at.radio(key="dec_source").set_value("Upload betas").run()
    at.file_uploader(key="dec_upload").upload("../../three trials.npy", buffer.getvalue()).run()
    assert not at.exception and not at.error
    # the page z-scores an upload like training, so raw betas retrieve what the trials themselves retrieve
    ids, _ = _exact_top_k(decode_env, np.concatenate([trial_betas(run, t) for t in trials]), 5)
    captions = [c for c in _captions(at) if len(c) == 5]
    assert [[c.split(" · ")[1] for c in row] for row in captions] == [[f"image {int(i)}" for i in r] for r in ids]
    assert any("seen image unknown" in c.value for c in at.caption)
    saved = list((decode_env.root / "uploads").rglob("*.npy"))
    assert [p.name for p in saved] == ["three_trials.npy"]


def test_wrong_voxel_count_upload_shows_one_line_and_keeps_running(decode_env: DecodeWorkspace) -> None:
    at = _page()
    at.radio(key="dec_source").set_value("Upload betas").run()
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 7), dtype=np.float32))
    at.file_uploader(key="dec_upload").upload("bad.npy", buffer.getvalue()).run()
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert message.startswith("bad.npy: betas of shape (2, 7)") and "\n" not in message
    assert str(decode_env.root) not in message  # the server path of the upload is not shown
    assert not at.image and not at.get("download_button")
    at.radio(key="dec_source").set_value("Simulated test trial").run()  # the page still works afterwards
    assert not at.exception and not at.error and len(_captions(at)[1]) == 5


def test_reconstruct_matches_the_pipeline_and_downloads_pngs(decode_env: DecodeWorkspace) -> None:
    from neuroattn.decode.pipeline import load_reconstructor, reconstruct_images

    at = _page()
    at.slider(key="dec_steps").set_value(3).run()
    at.number_input(key="dec_seed").set_value(4).run()
    at.button(key="dec_reconstruct").click().run()
    assert not at.exception and not at.error
    run = open_run(load_settings(decode_env.root, data_roots=[]), decode_env.run)
    trial = simulated_trials(run)[0]
    assert _captions(at)[-1] == ["seen", "low-level path", "reconstruction 0"]
    expected, low = reconstruct_images(run.decoder, trial_betas(run, trial), load_reconstructor(decode_env.data),
                                       steps=3, seed=4)
    name = f"0000_image{trial.image_id}"
    out = next((decode_env.root / "outputs" / "decode").rglob(f"{name}_reconstruction.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected[0])
    assert low is not None
    np.testing.assert_array_equal(np.asarray(Image.open(out.with_name(f"{name}_lowlevel.png"))), low[0])
    info = json.loads((out.parent / "reconstruction.json").read_text())
    assert info["label"] == "UNTRAINED" and f"{name}_reconstruction.png" in info["images"]
    labels = [d.label for d in at.get("download_button")]
    assert f"Download {name}_reconstruction.png" in labels and f"Download {name}_lowlevel.png" in labels


def test_runs_data_folders_and_uploads_stay_inside_the_roots(decode_env: DecodeWorkspace, tmp_path: Path) -> None:
    settings = load_settings(decode_env.root, data_roots=[], max_upload_mb=1)
    assert [e.path for e in find_decode_runs(settings)] == [decode_env.run]
    assert find_data_folders(settings) == [decode_env.data.resolve()]
    outside = load_settings(tmp_path / "other_ws", data_roots=[])
    with pytest.raises(InvalidInputError, match="outside the folders"):
        open_run(outside, decode_env.run)  # the run (and its data) lie outside this workspace
    copy = outside.runs / "copy"
    copy.mkdir()
    (copy / "decode_run.json").write_text((decode_env.run / "decode_run.json").read_text())
    assert [e.path for e in find_decode_runs(outside)] == [copy]
    with pytest.raises(InvalidInputError, match=re.escape(f"{decode_env.data.resolve()}: outside the folders")):
        open_run(outside, copy)  # a readable run may not point the app at data outside the roots
    with pytest.raises(InvalidInputError, match=r"expected betas as \.npy or a NIfTI"):
        save_betas_upload(b"x", "betas.txt", tmp_path, max_mb=1)
    with pytest.raises(InvalidInputError, match="over the 1 MB limit"):
        save_betas_upload(b"0" * (2**20 + 1), "big.npy", tmp_path, max_mb=1)
    assert not list(tmp_path.glob("*.npy"))
    assert save_betas_upload(b"x", "..\\..\\a b.nii.gz", tmp_path, max_mb=1) == tmp_path / "a_b.nii.gz"


def test_simulate_demo_data_and_train_from_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import neuroattn.web.decode_page as decode_page

    tiny = SimulateSettings(n_images=60, image_size=32, simulation={"n_subjects": 1, "n_voxels": 40, "test_images": 10,
                                                                    "n_semantic": 4, "n_lowlevel": 4},
                            autoencoder_steps=0, variation_steps=0, device="cpu")
    monkeypatch.setattr(decode_page, "DEMO_SIMULATION", tiny)
    monkeypatch.setenv("NEUROATTN_WORKSPACE", str(tmp_path / "fresh"))
    monkeypatch.delenv("NEUROATTN_DATA_ROOTS", raising=False)
    at = _page()
    assert any("No decoding runs" in i.value for i in at.info)
    at.button(key="dec_simulate").click().run()
    assert not at.exception and not at.error
    demo = (tmp_path / "fresh" / "data" / "decode-demo").resolve()
    assert at.selectbox(key="dec_data").options == [str(demo)]
    at.radio(key="dec_model").set_value("ridge")
    at.button(key="dec_train").click().run()
    assert not at.exception and not at.error
    assert at.get("progress")[0].proto.text.endswith("done")
    assert at.selectbox(key="dec_run").options == ["decode-ridge-decode-demo · ridge · subj01 · UNTRAINED CLIP"]
    assert len(_captions(at)[1]) == 5  # retrieval works on the new run straight away
    at.button(key="dec_reconstruct").click().run()  # no generator was trained: one clear line, the page lives on
    assert not at.exception
    assert len(at.error) == 1 and "no image generator" in at.error[0].value


def _nifti_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    return nib.Nifti1Image(data.astype(np.float32), affine).to_bytes()


def test_uploaded_nifti_with_and_without_mask(decode_env: DecodeWorkspace) -> None:
    run = open_run(load_settings(decode_env.root, data_roots=[]), decode_env.run)
    trials = simulated_trials(run)[3:5]
    raw = load_subject(decode_env.data, run.subject, zscore=False)
    volume = np.zeros((*raw.mask_shape, len(trials)), dtype=np.float32)  # (X, Y, Z, N)
    volume[tuple(raw.voxel_ijk.T)] = raw.betas[[t.trial for t in trials]].T  # (V, N) at the subject's voxels
    ids, _ = _exact_top_k(decode_env, np.concatenate([trial_betas(run, t) for t in trials]), 5)
    expected = [[f"image {int(i)}" for i in r] for r in ids]
    at = _page()
    at.radio(key="dec_source").set_value("Upload betas").run()
    at.file_uploader(key="dec_upload").upload("betas.nii", _nifti_bytes(volume, raw.affine)).run()
    assert not at.exception and not at.error
    assert [[c.split(" · ")[1] for c in row] for row in _captions(at) if len(row) == 5] == expected
    at.file_uploader(key="dec_mask").upload("mask.nii", _nifti_bytes(raw.mask(), raw.affine)).run()
    assert not at.exception and not at.error
    assert [[c.split(" · ")[1] for c in row] for row in _captions(at) if len(row) == 5] == expected
    half = raw.mask() & (np.arange(raw.mask_shape[0]) < raw.mask_shape[0] // 2)[:, None, None]
    at.file_uploader(key="dec_mask").upload("half.nii", _nifti_bytes(half, raw.affine)).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith(f"half.nii: mask holds {int(half.sum())} voxels")
