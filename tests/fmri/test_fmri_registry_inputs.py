"""fMRI model registry (one adapter per family) and input reading: runs, labels joined by subject, model arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.fmri.inputs import fit_frames, read_fmri_runs, read_labels, roi_inputs, subject_key
from neuroattn.fmri.registry import get_model, model_for_class, model_names
from neuroattn.io.nifti import save_volume, volume_from_array

torch.set_num_threads(1)

FAMILIES = ["brainmae", "slim-brain", "tablet"]


def _write_bold(path: Path, xyzt: np.ndarray, tr: float = 1.5) -> Path:
    vol = volume_from_array(xyzt, voxel_size=3.0)
    vol.header.set_zooms((3.0, 3.0, 3.0, tr))
    vol.header.set_xyzt_units("mm", "sec")
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_volume(vol, path)


def _tiny_arrays(family_name: str, rng: np.random.Generator, n: int = 3) -> list[np.ndarray]:
    family = get_model(family_name)
    cfg = family.tiny()
    if family.input_kind == "roi":
        return [rng.standard_normal((cfg.window_frames, cfg.n_rois)).astype(np.float32) for _ in range(n)]
    if family_name == "slim-brain":
        return [rng.standard_normal((2 * cfg.window_frames, *cfg.window_shape)).astype(np.float32) for _ in range(n)]
    return [rng.standard_normal((6, 10, 12, 9)).astype(np.float32) for _ in range(n)]  # TABLeT pads to its cube


# -- registry -------------------------------------------------------------------------------------------------


def test_names_aliases_and_unknown_names_list_what_exists() -> None:
    assert model_names() == FAMILIES
    assert get_model("SLIM_Brain").name == "slim-brain" and get_model("slimbrain").name == "slim-brain"
    assert get_model(" TABLeT ").name == "tablet"
    with pytest.raises(ConfigError) as info:
        get_model("swiftx")
    assert "'swiftx'" in str(info.value) and "brainmae, slim-brain, tablet" in str(info.value)
    assert {model_for_class(get_model(n).model_class).name for n in FAMILIES} == set(FAMILIES)
    with pytest.raises(ConfigError, match="known classes"):
        model_for_class("SACycleGAN")


@pytest.mark.parametrize("name", FAMILIES)
def test_configs_validate_round_trip_and_reject_typos(name: str) -> None:
    family = get_model(name)
    assert family.config_from_dict({}) == family.published() == family.config_class()
    tiny = family.tiny()
    assert family.config_from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ConfigError) as info:
        family.config_from_dict({"bogus_knob": 1}, where="cfg.yaml: model_config")
    assert str(info.value).startswith("cfg.yaml: model_config: unknown setting(s) ['bogus_knob']")


def test_nested_keys_types_and_ranges_are_checked() -> None:
    tablet = get_model("tablet")
    with pytest.raises(ConfigError, match=r"model_config\.tokenizer: unknown setting\(s\) \['cube'\]"):
        tablet.config_from_dict({"tokenizer": {"cube": 16}})
    with pytest.raises(ConfigError, match=r"model_config\.d_model: Input should be a valid integer"):
        tablet.config_from_dict({"d_model": "wide"})
    with pytest.raises(ConfigError, match="'pooling' must be one of"):
        tablet.config_from_dict({"pooling": "max"})
    # a partial nested override keeps the other nested values of the base
    cfg = tablet.config_from_dict({"tokenizer": {"width": 8}}, base=tablet.tiny())
    assert cfg.tokenizer.width == 8 and cfg.tokenizer.cube_size == tablet.tiny().tokenizer.cube_size
    slim = get_model("slim-brain")
    with pytest.raises(ConfigError, match=r"model_config\.encoder: unknown setting\(s\) \['depths'\]"):
        slim.config_from_dict({"encoder": {"depths": [1]}})


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_builds_seeded_and_embeds_deterministically(name: str) -> None:
    family = get_model(name)
    cfg = family.tiny()
    a, b, c = family.build(cfg, seed=0), family.build(cfg, seed=0), family.build(cfg, seed=1)
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)
    assert not a.training
    runs = _tiny_arrays(name, np.random.default_rng(0))
    feats = family.embed(a, runs)
    assert feats.shape[0] == len(runs) and feats.ndim == 2 and np.isfinite(feats).all()
    np.testing.assert_array_equal(feats, family.embed(b, runs))
    assert np.abs(feats - feats[0]).max() > 0  # different runs, different features


def test_untrained_parts_and_brainmae_config_follows_the_data() -> None:
    tablet = get_model("tablet")
    assert "random init" in tablet.untrained_parts(tablet.tiny())[0]
    with_weights = tablet.config_from_dict({"tokenizer": {"autoencoder_path": "/models/dcae"}}, base=tablet.tiny())
    assert tablet.untrained_parts(with_weights) == []
    assert get_model("slim-brain").untrained_parts(get_model("slim-brain").tiny()) == []
    mae = get_model("brainmae")
    cfg = mae.tiny()  # 24 ROIs at TR 1 s
    adapted, notes = mae.adapt_config(cfg, [np.zeros((40, 7), np.float32)], 2.0)
    assert (adapted.n_rois, adapted.tr, adapted.segment_frames) == (7, 2.0, 2)  # round(4 s / 2 s)
    assert len(notes) == 2 and "n_rois: 24 -> 7" in notes[0]
    same, none = mae.adapt_config(adapted, [np.zeros((40, 7), np.float32)], None)
    assert same == adapted and none == []


# -- inputs ---------------------------------------------------------------------------------------------------


def test_fit_frames_centre_crops_and_pads() -> None:
    data = np.arange(2 * 7 * 4 * 3, dtype=np.float32).reshape(2, 7, 4, 3) + 1
    out = fit_frames(data, (5, 4, 7))  # X cropped 7 -> 5, Y kept, Z padded 3 -> 7
    assert out.shape == (2, 5, 4, 7)
    np.testing.assert_array_equal(out[:, :, :, 2:5], data[:, 1:6])
    assert out[:, :, :, :2].sum() == 0 and out[:, :, :, 5:].sum() == 0
    with pytest.raises(InvalidInputError, match="expected frames"):
        fit_frames(data[0], (5, 4, 7))


def test_read_runs_from_file_folder_manifest_and_bids(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = [rng.standard_normal((4, 5, 3, 6)).astype(np.float32) for _ in range(2)]  # (X, Y, Z, T)
    files = [_write_bold(tmp_path / "loose" / f"s{i}.nii.gz", d) for i, d in enumerate(data)]
    single = read_fmri_runs(files[0])
    assert len(single) == 1 and single[0].subject == "s0" and single[0].tr == pytest.approx(1.5)
    np.testing.assert_array_equal(single[0].frames, np.moveaxis(data[0], -1, 0))  # (T, X, Y, Z)
    folder = read_fmri_runs(tmp_path / "loose")
    assert [r.subject for r in folder] == ["s0", "s1"] and folder[1].frames.shape == (6, 4, 5, 3)
    manifest = tmp_path / "runs.csv"
    manifest.write_text(f"path,site,subject,modality\n{files[1]},a,sub-07,bold\n")
    assert [r.subject for r in read_fmri_runs(manifest)] == ["07"]
    bids = tmp_path / "bids"
    _write_bold(bids / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz", data[1])
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    runs = read_fmri_runs(bids)
    assert [r.subject for r in runs] == ["01"]
    np.testing.assert_array_equal(runs[0].frames, np.moveaxis(data[1], -1, 0))


def test_read_runs_rejects_3d_and_non_nifti(tmp_path: Path) -> None:
    flat = save_volume(volume_from_array(np.ones((4, 4, 4))), tmp_path / "anat.nii.gz")
    with pytest.raises(InvalidInputError) as info:
        read_fmri_runs(flat)
    assert str(flat) in str(info.value)
    table = tmp_path / "ts.tsv"
    table.write_text("a\n1\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,site,subject\n{table},a,01\n")
    with pytest.raises(InvalidInputError, match="not a NIfTI file"):
        read_fmri_runs(manifest)


def test_labels_join_by_subject_with_clear_errors(tmp_path: Path) -> None:
    tsv = tmp_path / "participants.tsv"
    tsv.write_text("participant_id\tlabel\tage\tgroup\nsub-01\t1\t31.5\tctl\nsub-02\t0\t40\tpat\nsub-03\t1\tn/a\tctl\n")
    labels = read_labels(tsv, ["01", "sub-02", "01", "03"])  # two runs of subject 01
    assert labels.task == "classification" and labels.classes == ["0", "1"]
    np.testing.assert_array_equal(labels.values, [1, 0, 1, 1])
    text = read_labels(tsv, ["01", "02"], column="group")
    assert text.classes == ["ctl", "pat"] and text.values.tolist() == [0, 1]
    age = read_labels(tsv, ["01", "02"], column="age")
    assert age.task == "regression" and age.values.tolist() == [31.5, 40.0]
    with pytest.raises(InvalidInputError) as info:
        read_labels(tsv, ["01", "03", "09"], column="age")  # 03 has n/a, 09 is absent
    message = str(info.value)
    assert "\n" not in message and "subject(s) 03, 09 (2 of 3 subjects)" in message and str(tsv) in message
    with pytest.raises(InvalidInputError, match=r"no label column 'sex'; columns are \['participant_id'"):
        read_labels(tsv, ["01"], column="sex")
    with pytest.raises(InvalidInputError, match="holds text"):
        read_labels(tsv, ["01"], column="group", task="regression")
    csv = tmp_path / "labels.csv"
    csv.write_text("subject,y\n01,a\n01,b\n")
    with pytest.raises(InvalidInputError, match="two different 'y' values"):
        read_labels(csv, ["01"], column="y")
    bad = tmp_path / "nosubject.csv"
    bad.write_text("id,y\n01,1\n")
    with pytest.raises(InvalidInputError, match="no subject column"):
        read_labels(bad, ["01"], column="y")
    assert subject_key(" sub-003 ") == "003"


def test_roi_series_from_a_label_image_recover_planted_signals(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    t = 30
    signals = rng.standard_normal((2, t))
    data = np.full((6, 6, 6, t), 100.0, dtype=np.float32)
    labels = np.zeros((6, 6, 6), dtype=np.float32)
    labels[:3, :, :2], labels[3:, :, 4:] = 1, 2
    data[:3, :, :2] += signals[0]
    data[3:, :, 4:] += 3 * signals[1]
    bold = _write_bold(tmp_path / "s1.nii.gz", data)
    label_path = save_volume(volume_from_array(labels, voxel_size=3.0), tmp_path / "rois.nii.gz")
    series, names = roi_inputs(read_fmri_runs(bold), str(label_path))
    assert names == ["label_1", "label_2"] and series[0].shape == (t, 2)
    z = (signals - signals.mean(1, keepdims=True)) / signals.std(1, keepdims=True)
    np.testing.assert_allclose(series[0], z.T, atol=1e-4)
    with pytest.raises(ConfigError, match="'rois' must be one of"):
        roi_inputs(read_fmri_runs(bold), "schaefer_100")
