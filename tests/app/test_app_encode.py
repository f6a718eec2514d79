"""Encode page headless: a tiny simulated data folder, a LaVCa and a BraInCoRL run; maps, accuracy, captions."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from app_test_support import APP_DIR
from streamlit.testing.v1 import AppTest
from threadpoolctl import threadpool_limits

from neuroattn.decode.pipeline import SimulateSettings, simulate_dataset
from neuroattn.encode.run_outputs import describe_voxels, text_selectivity
from neuroattn.encode.runs import EncodeRun, EncodeSettings, fit_encoder, open_run
from neuroattn.errors import InvalidInputError
from neuroattn.pipelines import load_pipeline_config
from neuroattn.web.encode_page import escape_markdown, find_encode_runs, open_encode_run
from neuroattn.web.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
ENCODE = str(APP_DIR / "views" / "encode.py")
QUERY = "a photo of a horse"


@dataclass(frozen=True)
class EncodeWorkspace:
    root: Path
    data: Path  # the simulated data folder (tiny decode config, generator untrained)
    lavca: Path  # LaVCa run of subj02, every voxel
    braincorl: Path  # tiny BraInCoRL run of subj02, meta-trained on subj01
    reference: EncodeRun  # the LaVCa run opened through the encoding API, for expected values


@pytest.fixture(scope="module")
def encode_workspace(tmp_path_factory: pytest.TempPathFactory) -> EncodeWorkspace:
    root = tmp_path_factory.mktemp("encode_ws")
    load_settings(root, data_roots=[])  # creates runs/, outputs/, uploads/
    data = root / "data" / "sim"
    simulation = load_pipeline_config(ROOT / "pipelines" / "decode" / "simulate-tiny.yaml", SimulateSettings)
    simulation.autoencoder_steps = simulation.variation_steps = 0  # encoders never reconstruct images
    braincorl = load_pipeline_config(ROOT / "pipelines" / "encode" / "tiny.yaml", EncodeSettings)
    lavca = EncodeSettings(model="lavca", device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on two shared cores, BLAS and torch threads mostly wait on each other
    try:
        with threadpool_limits(limits=1):
            simulate_dataset(data, simulation)
            fit_encoder(braincorl.open_data(data), braincorl, root / "runs" / "braincorl")
            fit_encoder(lavca.open_data(data), lavca, root / "runs" / "lavca")
            reference = open_run(root / "runs" / "lavca")
    finally:
        torch.set_num_threads(threads)
    return EncodeWorkspace(root, data, root / "runs" / "lavca", root / "runs" / "braincorl", reference)


@pytest.fixture
def encode_env(encode_workspace: EncodeWorkspace, monkeypatch: pytest.MonkeyPatch) -> EncodeWorkspace:
    monkeypatch.setenv("NEUROATTN_WORKSPACE", str(encode_workspace.root))
    monkeypatch.delenv("NEUROATTN_DATA_ROOTS", raising=False)
    return encode_workspace


def _page() -> AppTest:
    at = AppTest.from_file(ENCODE, default_timeout=120).run()
    assert not at.exception and not at.error
    return at


def _voxels_shown(at: AppTest) -> int:
    return int(next(m for m in at.metric if m.label == "Voxels shown").value)


def _top_image_captions(at: AppTest) -> list[list[str]]:
    """Captions of the voxel's top-image row (the slice views are images too)."""
    return [img.captions for img in at.image if img.captions and img.captions[0].startswith("image ")]


def _pearson64(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-column Pearson r in float64 with numpy's corrcoef (the reference)."""
    return np.array([np.corrcoef(pred[:, v].astype(np.float64), true[:, v].astype(np.float64))[0, 1]
                     for v in range(pred.shape[1])])


def test_page_lists_both_runs_and_labels_them_untrained(encode_env: EncodeWorkspace) -> None:
    at = _page()
    options = at.selectbox(key="enc_run").options
    n = encode_env.reference.subject.n_voxels
    assert options == [f"lavca · lavca · subj02 · {n} voxels · UNTRAINED CLIP",  # newest first
                       f"braincorl · braincorl · subj02 · {n} voxels · UNTRAINED CLIP"]
    assert len(at.warning) == 1
    warning = at.warning[0].value
    assert warning.startswith("UNTRAINED: CLIP features (tiny random CLIP)")
    assert _voxels_shown(at) == n
    at.selectbox(key="enc_run").set_value(options[1]).run()
    assert not at.exception and not at.error
    assert "braincorl encoder of subj02" in at.caption[0].value
    assert at.warning[0].value.startswith("UNTRAINED: CLIP features")


def test_text_query_map_equals_text_selectivity_and_downloads(encode_env: EncodeWorkspace) -> None:
    ref = encode_env.reference
    at = _page()
    at.text_input(key="enc_query").input(QUERY).run()
    assert not at.exception and not at.error
    expected = text_selectivity(ref, [QUERY])[0]  # (V,) from a separately opened run
    path = next((encode_env.root / "outputs" / "encode").rglob("selectivity_a-photo-of-a-horse.nii.gz"))
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    s = ref.subject
    assert data.shape == s.mask_shape
    np.testing.assert_allclose(img.affine, s.affine, atol=1e-5)
    np.testing.assert_allclose(data[tuple(s.voxel_ijk[ref.encoder.voxels].T)], expected, atol=1e-5)
    outside = np.ones(s.mask_shape, dtype=bool)
    outside[tuple(s.voxel_ijk.T)] = False
    assert not data[outside].any()
    sidecar = json.loads(path.with_name("selectivity_a-photo-of-a-horse.json").read_text())
    assert sidecar["label"] == "UNTRAINED" and sidecar["n_voxels"] == s.n_voxels and sidecar["text"] == QUERY
    assert f"Download {path.name}" in [d.label for d in at.get("download_button")]
    top = at.dataframe[0].value
    order = np.argsort(-expected, kind="stable")[:10]
    assert top["voxel"].tolist() == ref.encoder.voxels[order].tolist()
    np.testing.assert_allclose(top["predicted response"], expected[order], atol=1e-5)
    assert any("UNTRAINED" in m.value and QUERY in m.value for m in at.markdown)
    views = [img.captions[0] for img in at.image if "through the peak voxel" in img.captions[0]]
    assert views == [f"{v} · through the peak voxel" for v in ("sagittal", "coronal", "axial")]


def test_roi_filter_changes_voxel_count_map_and_accuracy_table(encode_env: EncodeWorkspace) -> None:
    ref = encode_env.reference
    s = ref.subject
    codes = {name: code for code, name in s.roi_names.items()}
    keep = np.isin(s.roi[ref.encoder.voxels], [codes["V4"], codes["higher"]])  # (V,)
    assert 0 < keep.sum() < s.n_voxels
    at = _page()
    assert at.multiselect(key="enc_rois").options == ["V1", "V2", "V3", "V4", "higher"]
    at.multiselect(key="enc_rois").set_value(["V4", "higher"]).run()
    assert not at.exception and not at.error
    assert _voxels_shown(at) == keep.sum()
    at.text_input(key="enc_query").input(QUERY).run()
    path = next((encode_env.root / "outputs" / "encode").rglob("selectivity_a-photo-of-a-horse_v4-higher.nii.gz"))
    values = np.asarray(nib.load(path).dataobj)[tuple(s.voxel_ijk[ref.encoder.voxels].T)]
    expected = text_selectivity(ref, [QUERY])[0]
    np.testing.assert_allclose(values[keep], expected[keep], atol=1e-5)
    assert not values[~keep].any()
    table = next(d.value for d in at.dataframe if "mean_r" in d.value.columns)
    assert table["roi"].tolist() == ["V4", "higher", "all shown"]
    r = _pearson64(ref.encoder.predict(ref.data.features.values[s.test_ids]), ref.responses_test)
    for name, mask in (("V4", s.roi[ref.encoder.voxels] == codes["V4"]),
                       ("higher", s.roi[ref.encoder.voxels] == codes["higher"]), ("all shown", keep)):
        row = table[table["roi"] == name].iloc[0]
        assert row["n_voxels"] == mask.sum()
        assert row["mean_r"] == pytest.approx(r[mask].mean(), abs=1e-6)
        assert row["noise_ceiling"] == pytest.approx(s.noise_ceiling[ref.encoder.voxels][mask].mean(), abs=1e-6)
    assert table["mean_r"].iloc[-1] > 0.2  # the planted responses are linear in these features: ridge finds them
    at.multiselect(key="enc_rois").set_value([]).run()
    assert _voxels_shown(at) == s.n_voxels


def test_voxel_caption_equals_describe_voxels(encode_env: EncodeWorkspace) -> None:
    ref = encode_env.reference
    at = _page()
    picker = at.selectbox(key="enc_voxel")
    nc = ref.subject.noise_ceiling[ref.encoder.voxels]
    most_reliable = ref.encoder.voxels[np.argsort(-nc, kind="stable")[:25]]
    assert [int(re.match(r"voxel (\d+) ", o).group(1)) for o in picker.options] == most_reliable.tolist()
    assert not _top_image_captions(at)  # nothing is captioned before asked
    picker.set_value(picker.options[2]).run()
    at.button(key="enc_describe").click().run()
    assert not at.exception and not at.error
    column = int(np.flatnonzero(ref.encoder.voxels == most_reliable[2])[0])
    expected = describe_voxels(ref, voxels=np.array([column]))
    markdown = [m.value for m in at.markdown]
    assert f"#### {escape_markdown(expected.sentences[0])}" in markdown
    assert "**Keywords:** " + escape_markdown(", ".join(expected.keywords[0])) in markdown
    [captions] = _top_image_captions(at)
    assert captions == [f"image {int(i)} · {float(v):.2f}"
                        for i, v in zip(expected.top_ids[0], expected.top_responses[0], strict=True)]
    assert not set(expected.top_ids[0].tolist()) & set(ref.subject.test_ids.tolist())  # held-out images kept out
    at.selectbox(key="enc_voxel").set_value(picker.options[0]).run()  # another voxel: not captioned yet
    assert not _top_image_captions(at)
    at.selectbox(key="enc_voxel").set_value(picker.options[2]).run()  # the first one comes back from the cache
    assert _top_image_captions(at) == [captions]


def test_bad_run_folder_path_gives_one_error_line(encode_env: EncodeWorkspace, tmp_path: Path) -> None:
    not_a_run = encode_env.root / "runs" / "empty"
    not_a_run.mkdir(exist_ok=True)
    at = _page()
    for typed, problem in ((not_a_run, f"{not_a_run}: not an encoding run folder"),
                           (encode_env.root / "runs" / "missing", "no such run folder"),
                           (tmp_path, f"{tmp_path}: outside the folders this app may read")):
        at.text_input(key="enc_path").input(str(typed)).run()
        assert not at.exception
        assert len(at.error) == 1, typed
        assert problem in at.error[0].value and "\n" not in at.error[0].value
        assert not at.get("download_button") and not at.metric
    at.text_input(key="enc_path").input("runs/braincorl").run()  # a good path (relative: to the workspace)
    assert not at.exception and not at.error
    assert "braincorl encoder of subj02" in at.caption[0].value


def test_runs_and_their_data_stay_inside_the_roots(encode_env: EncodeWorkspace, tmp_path: Path) -> None:
    inside = load_settings(encode_env.root, data_roots=[])
    assert {e.path for e in find_encode_runs(inside)} == {encode_env.lavca, encode_env.braincorl}
    outside = load_settings(tmp_path / "other_ws", data_roots=[])
    copy = outside.runs / "copy"
    copy.mkdir()
    (copy / "encode_run.json").write_text((encode_env.lavca / "encode_run.json").read_text())
    (outside.runs / "broken").mkdir()
    (outside.runs / "broken" / "encode_run.json").write_text("{not json")
    assert [e.path for e in find_encode_runs(outside)] == [copy]  # the broken one is left out
    with pytest.raises(InvalidInputError, match=re.escape(f"{encode_env.data.resolve()}: outside the folders")):
        open_encode_run(outside, copy)  # a readable run may not point the app at data outside the roots
    with pytest.raises(InvalidInputError, match=r"unreadable encode_run\.json \(JSONDecodeError"):
        open_encode_run(outside, outside.runs / "broken")
