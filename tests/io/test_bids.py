"""BIDS -> manifest through pybids on tiny hand-built datasets: entities, sites, covariates and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neuroattn.errors import ConfigError, InvalidInputError, ManifestError
from neuroattn.io.bids import manifest_from_bids, read_participants
from neuroattn.io.manifest import load_manifest, validate_manifest
from neuroattn.io.nifti import load_volume, save_volume, volume_from_array

DESCRIPTION = {"Name": "tiny", "BIDSVersion": "1.8.0"}


def _nifti(path: Path, value: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_volume(volume_from_array(np.full((2, 3, 2), value, dtype=np.float32)), path)


def _dataset(root: Path, participants: str | None, sessions=("1", "2"), suffixes=("T1w", "T2w")) -> Path:
    """Subjects 01 and 02; each image holds a constant that encodes (subject, session, suffix)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(DESCRIPTION))
    if participants is not None:
        (root / "participants.tsv").write_text(participants)
    for s, sub in enumerate(("01", "02")):
        for t, ses in enumerate(sessions):
            for k, suffix in enumerate(suffixes):
                folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
                name = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_{suffix}.nii.gz"
                _nifti(folder / name, 100 * s + 10 * t + k)
    return root


PARTICIPANTS = "participant_id\tage\tsex\tsite\nsub-01\t31\tF\tsiteA\nsub-02\tn/a\tM\tsiteB\n"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("bids") / "ds", PARTICIPANTS)


def test_two_subjects_two_sessions_two_suffixes(dataset: Path) -> None:
    m = manifest_from_bids(dataset)
    assert len(m) == 8
    assert m.root == dataset
    got = [(r.subject, r.session, r.modality, r.site, r.extras["age"], r.extras["sex"]) for r in m]
    assert got == [
        ("01", "1", "T1w", "siteA", "31", "F"), ("01", "1", "T2w", "siteA", "31", "F"),
        ("01", "2", "T1w", "siteA", "31", "F"), ("01", "2", "T2w", "siteA", "31", "F"),
        ("02", "1", "T1w", "siteB", "", "M"), ("02", "1", "T2w", "siteB", "", "M"),
        ("02", "2", "T1w", "siteB", "", "M"), ("02", "2", "T2w", "siteB", "", "M"),
    ]
    assert m.extra_columns == ["age", "sex"]  # the site column became the site, not a covariate
    assert m[5].relative_path == "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii.gz"
    # Each row points at the file its labels name: the planted constant decodes back to (subject, session, suffix).
    for r in m:
        value = float(load_volume(r.path).data[0, 0, 0])
        s, t, k = int(value // 100), int(value // 10 % 10), int(value % 10)
        assert (r.subject, r.session, r.modality) == (("01", "02")[s], ("1", "2")[t], ("T1w", "T2w")[k])
    cov = m.covariates()
    assert np.isnan(cov["age"].iloc[4]) and cov["age"].iloc[0] == 31.0


def test_bids_manifest_round_trips_through_csv(dataset: Path, tmp_path: Path) -> None:
    m = manifest_from_bids(dataset)
    out = m.to_csv(tmp_path / "cohort.csv")
    again = load_manifest(out, known_sites=["siteA", "siteB"], expected_modalities=["T1w", "T2w"])
    assert again == m


def test_site_rules(dataset: Path) -> None:
    by_session = manifest_from_bids(dataset, site_from="session")
    assert [r.site for r in by_session] == [r.session for r in by_session]
    assert by_session.extra_columns == ["age", "sex", "participants_site"]
    assert [r.extras["participants_site"] for r in by_session][::4] == ["siteA", "siteB"]
    by_column = manifest_from_bids(dataset, site_from="participants:sex")
    assert [r.site for r in by_column] == ["F"] * 4 + ["M"] * 4
    by_callable = manifest_from_bids(dataset, site_from=lambda e: f"{e['subject']}-{e['suffix']}")
    assert by_callable.sites == ["01-T1w", "01-T2w", "02-T1w", "02-T2w"]
    only_t1 = manifest_from_bids(dataset, suffixes="T1w", site_from="entity:session")
    assert (len(only_t1), only_t1.modalities, only_t1.sites) == (4, ["T1w"], ["1", "2"])


def test_site_from_sidecar_metadata(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", None, sessions=("",), suffixes=("T1w",))
    (root / "sub-01" / "anat" / "sub-01_T1w.json").write_text(json.dumps({"DeviceSerialNumber": "4711"}))
    (root / "sub-02" / "anat" / "sub-02_T1w.json").write_text(json.dumps({"DeviceSerialNumber": "0815"}))
    m = manifest_from_bids(root, site_from="metadata:DeviceSerialNumber")
    assert [(r.subject, r.site) for r in m] == [("01", "4711"), ("02", "0815")]


def test_default_site_falls_back_to_session_then_unknown(tmp_path: Path) -> None:
    no_site = "participant_id\tage\nsub-01\t20\nsub-02\t22\n"
    m = manifest_from_bids(_dataset(tmp_path / "a", no_site, sessions=("pre", "post")))
    assert [r.site for r in m] == [r.session for r in m] and m.sites == ["post", "pre"]
    assert m.extra_columns == ["age"]
    m = manifest_from_bids(_dataset(tmp_path / "b", None, sessions=("",)))
    assert (m.sites, [r.session for r in m], m.extra_columns) == (["unknown"], [""] * 4, [])


def test_acquisition_and_run_kept_when_present(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "ds", PARTICIPANTS, sessions=("",), suffixes=("T1w",))
    _nifti(root / "sub-01" / "anat" / "sub-01_acq-fast_run-2_T1w.nii.gz", 7.0)
    m = manifest_from_bids(root)
    assert m.extra_columns == ["age", "sex", "acquisition", "run"]
    assert [(r.subject, r.extras["acquisition"], r.extras["run"]) for r in m] == [
        ("01", "", ""), ("01", "fast", "2"), ("02", "", "")]
    assert validate_manifest(m) == []  # two T1w of sub-01, told apart by acquisition and run
    out = m.to_csv(tmp_path / "m.csv")
    assert load_manifest(out) == m
    text = out.read_text().replace("fast,2", ",")  # without them the repeat is a duplicate
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(ManifestError, match=r"row 2: duplicate of row 1 \(same subject, site, session"):
        load_manifest(tmp_path / "m.csv")


def test_missing_site_labels_are_all_listed(tmp_path: Path) -> None:
    one_listed = "participant_id\tsite\nsub-01\tA\n"
    root = _dataset(tmp_path / "ds", one_listed, sessions=("",))
    with pytest.raises(ManifestError) as info:
        manifest_from_bids(root)
    assert info.value.problems == [
        f"sub-02/anat/sub-02_{s}.nii.gz: no site label (participants.tsv column 'site' is empty or the "
        "subject is not listed)" for s in ("T1w", "T2w")]
    with pytest.raises(ManifestError, match="site_from='acquisition' gives an empty label"):
        manifest_from_bids(root, site_from="acquisition")


def test_not_bids_and_empty_bids(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    _nifti(plain / "x.nii.gz", 1.0)
    with pytest.raises(InvalidInputError) as info:
        manifest_from_bids(plain)
    assert str(info.value) == f"{plain}: not a BIDS dataset (no dataset_description.json)"
    with pytest.raises(InvalidInputError, match="BIDS folder not found"):
        manifest_from_bids(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset_description.json").write_text(json.dumps(DESCRIPTION))
    with pytest.raises(InvalidInputError) as info:
        manifest_from_bids(empty)
    assert "no BIDS images with datatype 'anat', suffix T1w/T2w/FLAIR" in str(info.value)
    assert "the dataset has no .nii/.nii.gz images" in str(info.value)
    (empty / "dataset_description.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match=r"unreadable dataset_description\.json"):
        manifest_from_bids(empty)


def test_no_matching_files_names_what_is_there(dataset: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        manifest_from_bids(dataset, suffixes=["FLAIR"], extension="nii.gz")
    assert "suffix FLAIR and extension .nii.gz (found datatype/suffix: anat/T1w, anat/T2w)" in str(info.value)


def test_bad_options(dataset: Path) -> None:
    with pytest.raises(ConfigError, match=r"'site_from' must be one of .* 'scanner' was provided"):
        manifest_from_bids(dataset, site_from="scanner")
    with pytest.raises(InvalidInputError, match=r"no column 'handedness' for the site \(have: age, sex, site\)"):
        manifest_from_bids(dataset, site_from="participants:handedness")


def test_read_participants(tmp_path: Path) -> None:
    (tmp_path / "participants.tsv").write_text("participant_id\tAge Years\nsub-01\t n/a \n02\t40\n")
    table = read_participants(tmp_path)
    assert list(table.index) == ["01", "02"] and list(table["age_years"]) == ["", "40"]
    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-01\t1\nsub-01\t2\n")
    with pytest.raises(InvalidInputError, match=r"listed twice in participants\.tsv: 01"):
        read_participants(tmp_path)
    (tmp_path / "participants.tsv").write_text("id\tage\n1\t2\n")
    with pytest.raises(InvalidInputError, match="no participant_id column"):
        read_participants(tmp_path)
    assert len(read_participants(tmp_path / "nowhere")) == 0
