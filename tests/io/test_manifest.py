"""Cohort manifests: loading, every validation problem, path resolution, round trips and read_cohort dispatch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuroattn.errors import InvalidInputError, ManifestError
from neuroattn.io.cohort import read_cohort
from neuroattn.io.manifest import (
    Manifest,
    ManifestRow,
    load_manifest,
    validate_manifest,
)
from neuroattn.io.nifti import save_volume, volume_from_array


def _nifti(path: Path, seed: int = 0) -> Path:
    data = np.random.default_rng(seed).random((3, 3, 2)).astype(np.float32)
    return save_volume(volume_from_array(data), path)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    """A folder with 2 sites x 2 subjects x (T1w, T2w) images, a ground truth per image, and manifest.csv."""
    root = tmp_path / "cohort"
    lines = ["path,site,subject,session,modality,age,sex,ground_truth"]
    for i, (site, subject) in enumerate([("A", "001"), ("A", "002"), ("B", "003"), ("B", "004")]):
        for modality in ("T1w", "T2w"):
            rel = f"{site}/sub-{subject}_{modality}.nii.gz"
            _nifti(root / rel, seed=i)
            _nifti(root / "truth" / f"sub-{subject}_{modality}.nii.gz", seed=i)
            lines.append(f"{rel},{site},{subject},1,{modality},{30 + i}.5,{'MF'[i % 2]},"
                         f"truth/sub-{subject}_{modality}.nii.gz")
    _write(root / "manifest.csv", "\n".join(lines) + "\n")
    return root


def _problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, **kwargs)
    assert info.value.path == path
    return info.value.problems


# -- a valid manifest -----------------------------------------------------------------------------------


def test_relative_paths_resolve_from_manifest_folder_not_cwd(cohort: Path, tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    m = load_manifest(Path("../../cohort/manifest.csv"))
    assert len(m) == 8
    first = m[0]
    assert first.path == cohort / "A" / "sub-001_T1w.nii.gz"
    assert first.path.is_absolute() and first.path.is_file()
    assert first.relative_path == "A/sub-001_T1w.nii.gz"
    assert first.extras["ground_truth"] == str(cohort / "truth" / "sub-001_T1w.nii.gz")
    assert m.root == cohort


def test_labels_are_text_and_helpers_answer(cohort: Path) -> None:
    m = load_manifest(cohort / "manifest.csv", known_sites=["A", "B"], expected_modalities=["T1w", "T2w"])
    assert m.subjects == ["001", "002", "003", "004"]  # leading zeros survive: every cell is read as text
    assert m.sites == ["A", "B"]
    assert m.modalities == ["T1w", "T2w"]
    assert m.extra_columns == ["age", "sex", "ground_truth"]
    assert m.covariate_columns == ["age", "sex"]
    rows = list(m)
    assert all(isinstance(r, ManifestRow) for r in rows)
    assert [r.key for r in rows[:2]] == [("001", "A", "1", "T1w"), ("001", "A", "1", "T2w")]
    assert rows[2].extras == {"age": "31.5", "sex": "F", "ground_truth": str(cohort / "truth/sub-002_T1w.nii.gz")}

    site_b = m.rows_for(site="B")
    assert len(site_b) == 4 and site_b.subjects == ["003", "004"]
    t2_a = m.rows_for(site="A", modality="T2w")
    assert [r.relative_path for r in t2_a] == ["A/sub-001_T2w.nii.gz", "A/sub-002_T2w.nii.gz"]
    assert len(m.rows_for(subject=["001", "004"], modality="T1w")) == 2
    assert len(m.rows_for(site="C")) == 0

    cov = m.covariates()
    assert cov["age"].dtype == np.float64
    np.testing.assert_array_equal(cov["age"].to_numpy(), [30.5, 30.5, 31.5, 31.5, 32.5, 32.5, 33.5, 33.5])
    assert list(cov["sex"]) == ["M", "M", "F", "F", "M", "M", "F", "F"]


def test_column_names_case_spaces_and_aliases(tmp_path: Path) -> None:
    _nifti(tmp_path / "x.nii")
    _write(tmp_path / "m.csv", " File ,Scanner, Participant_ID ,Age\n x.nii , S1 , 7 , 40\n")
    m = load_manifest(tmp_path / "m.csv")
    assert (m[0].path, m[0].site, m[0].subject, m[0].extras) == (tmp_path / "x.nii", "S1", "7", {"age": "40"})


def test_tsv_manifest(tmp_path: Path) -> None:
    _nifti(tmp_path / "x.nii")
    _write(tmp_path / "m.tsv", "path\tsite\tsubject\nx.nii\tS\t1\n")
    assert load_manifest(tmp_path / "m.tsv")[0].path == tmp_path / "x.nii"


# -- each problem on its own ------------------------------------------------------------------------------

HEADER = "path,site,subject,session,modality\n"


@pytest.fixture
def images(tmp_path: Path) -> Path:
    for name in ("a", "b", "c", "d"):
        _nifti(tmp_path / f"{name}.nii.gz")
    return tmp_path


@pytest.mark.parametrize(
    ("body", "kwargs", "expected"),
    [
        ("a.nii.gz,S,1,,T1w\nmissing.nii.gz,S,2,,T1w\n", {}, "row 2: file not found: missing.nii.gz"),
        ("a.nii.gz,S,1,,T1w\nb.nii.gz,S,2,,T1w\n./a.nii.gz,S,3,,T1w\n", {}, "row 3: duplicate of row 1 (same path)"),
        ("a.nii.gz,S,1,,T1w\nb.nii.gz,S,1,,T1w\n", {},
         "row 2: duplicate of row 1 (same subject, site, session and modality)"),
        ("a.nii.gz,S,1,,T1w\nb.nii.gz,X,2,,T1w\n", {"known_sites": ["S"]}, "row 2: unknown site 'X' (known: S)"),
        ("a.nii.gz,S,1,,T1w\nb.nii.gz, ,2,,T1w\n", {}, "row 2: empty site"),
        ("a.nii.gz,S,,,T1w\n", {}, "row 1: empty subject"),
        (",S,1,,T1w\n", {}, "row 1: empty path"),
        ("a.nii.gz,S,1,,T1w\nb.nii.gz,S,2,,T3\n", {"expected_modalities": ["T1w", "T2w"]},
         "row 2: modality 'T3' not expected (expected: T1w, T2w)"),
        ("a.nii.gz,S,1,,T1w\nb.nii.gz,S,1,,T2w\nc.nii.gz,S,2,,T1w\n", {},
         "row 3: subject '2' (site 'S') lacks modality T2w that other subjects have"),
        ("a.nii.gz,S,1,1,T1w\nb.nii.gz,S,1,1,T2w\nc.nii.gz,S,1,2,T2w\n", {},
         "row 3: subject '1' (site 'S', session '2') lacks modality T1w that other subjects have"),
        ("a.nii.gz,S,1,,T1w\nb.nii.gz,S,2,,\n", {}, "row 2: empty modality (other rows name one)"),
        ("a.nii.gz,S,1,,T1w\n.,S,2,,T1w\n", {}, "row 2: is a directory, not a file: ."),
    ],
)
def test_each_problem_is_reported(images: Path, body: str, kwargs: dict, expected: str) -> None:
    path = _write(images / "m.csv", HEADER + body)
    assert _problems(path, **kwargs) == [expected]


def test_clean_version_of_each_case_passes(images: Path) -> None:
    """The checks do not fire on a correct cohort with sessions, several modalities and known sites."""
    body = "a.nii.gz,S,1,1,T1w\nb.nii.gz,S,1,1,T2w\nc.nii.gz,R,2,1,T1w\nd.nii.gz,R,2,1,T2w\n"
    m = load_manifest(_write(images / "m.csv", HEADER + body), known_sites=["S", "R"],
                      expected_modalities=["T1w", "T2w"])
    assert len(m) == 4


def test_expected_modalities_without_modality_column(images: Path) -> None:
    path = _write(images / "m.csv", "path,site,subject\na.nii.gz,S,1\nb.nii.gz,S,2\n")
    assert _problems(path, expected_modalities=["T1w"]) == ["no modality given, expected one of T1w per row"]


def test_missing_required_columns_stop_before_rows(images: Path) -> None:
    path = _write(images / "m.csv", "path,subject,age\nnowhere.nii,,\n")
    assert _problems(path) == ["missing required column(s): site (found: path, subject, age)"]
    path = _write(images / "m.csv", "image_file,age\nx,1\n")
    assert _problems(path) == ["missing required column(s): path, site, subject (found: image_file, age)"]


def test_duplicate_column_names(images: Path) -> None:
    path = _write(images / "m.csv", "path,site,subject,Site\na.nii.gz,S,1,S\n")
    assert _problems(path) == ["column 'site' appears more than once"]


def test_missing_ground_truth_file_is_reported(images: Path) -> None:
    path = _write(images / "m.csv", "path,site,subject,ground_truth\na.nii.gz,S,1,b.nii.gz\nc.nii.gz,S,2,gone.nii\n")
    assert _problems(path) == [f"row 2: ground_truth file not found: {images / 'gone.nii'}"]


def test_require_files_false_skips_existence(images: Path) -> None:
    path = _write(images / "m.csv", "path,site,subject\nnot_yet.nii.gz,S,1\n")
    assert _problems(path) == ["row 1: file not found: not_yet.nii.gz"]
    m = load_manifest(path, require_files=False)
    assert m[0].path == images / "not_yet.nii.gz"


def test_empty_manifests(tmp_path: Path) -> None:
    assert _problems(_write(tmp_path / "zero.csv", "")) == ["manifest is empty (no header, no rows)"]
    assert _problems(_write(tmp_path / "blank.csv", "\n  \n")) == ["manifest is empty (no header, no rows)"]
    assert _problems(_write(tmp_path / "head.csv", HEADER + "\n,,,,\n")) == [
        "manifest has a header but no data rows"]


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("m.csv", b"\x1f\x8b\x08\x00\x00\x00binary\x00\xff", "not a CSV file (binary content)"),
        ("m.csv", b"path,site,subject\n\xff\xfe\xfa,S,1\n", "not a CSV file (not UTF-8 text)"),
        ("m.csv", b'path,site,subject\na.nii,S,1\nb.nii,S,2,extra,more\n', "not a readable CSV file"),
        ("m.nii.gz", b"whatever", "is a NIfTI image, not a manifest CSV"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidInputError) as info:
        load_manifest(path)
    assert not isinstance(info.value, ManifestError)
    assert info.value.path == path
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_missing_manifest_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="manifest file not found"):
        load_manifest(tmp_path / "nope.csv")
    with pytest.raises(InvalidInputError, match="is a directory"):
        load_manifest(tmp_path)


# -- all problems at once ---------------------------------------------------------------------------------


def test_five_problems_in_one_error(images: Path) -> None:
    body = (
        "a.nii.gz,S,1,,T1w\n"         # row 1: fine
        "gone.nii.gz,S,2,,T1w\n"      # row 2: missing file
        "a.nii.gz,S,3,,T1w\n"         # row 3: same path as row 1
        "\n"                          # row 4: blank line, skipped but counted
        "b.nii.gz,Mars,4,,T1w\n"      # row 5: unknown site
        "c.nii.gz,S,,,T1w\n"          # row 6: empty subject
        "d.nii.gz,S,7,,PD\n"          # row 7: unexpected modality
    )
    path = _write(images / "m.csv", HEADER + body)
    with pytest.raises(ManifestError) as info:
        load_manifest(path, known_sites=["S"], expected_modalities=["T1w"])
    err = info.value
    assert err.problems == [
        "row 2: file not found: gone.nii.gz",
        "row 3: duplicate of row 1 (same path)",
        "row 5: unknown site 'Mars' (known: S)",
        "row 6: empty subject",
        "row 7: modality 'PD' not expected (expected: T1w)",
    ]
    message = str(err)
    assert message.startswith(f"{path}: 5 problem(s) in manifest: ")
    assert all(p in message for p in err.problems)


# -- writing ----------------------------------------------------------------------------------------------


def test_round_trip_in_place_keeps_spelling(cohort: Path) -> None:
    m = load_manifest(cohort / "manifest.csv")
    out = m.to_csv(cohort / "copy.csv")
    again = load_manifest(out)
    assert again == m
    assert again.table.equals(m.table)  # relative spellings too
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written.columns) == ["path", "site", "subject", "session", "modality", "age", "sex", "ground_truth"]
    assert written.loc[0, "path"] == "A/sub-001_T1w.nii.gz"
    assert written.loc[0, "ground_truth"] == "truth/sub-001_T1w.nii.gz"
    assert [p.name for p in cohort.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_round_trip_to_other_folders(cohort: Path, tmp_path: Path) -> None:
    m = load_manifest(cohort / "manifest.csv")
    parent_copy = m.to_csv(tmp_path / "parent.csv")  # images lie below: written relative to the new folder
    written = pd.read_csv(parent_copy, dtype=str, keep_default_na=False)
    assert written.loc[0, "path"] == "cohort/A/sub-001_T1w.nii.gz"
    assert load_manifest(parent_copy) == m
    far_copy = m.to_csv(tmp_path / "far" / "away" / "m.csv")  # images lie elsewhere: written absolute
    written = pd.read_csv(far_copy, dtype=str, keep_default_na=False)
    assert written.loc[0, "path"] == str(cohort / "A" / "sub-001_T1w.nii.gz")
    assert load_manifest(far_copy) == m
    assert load_manifest(far_copy) != m.rows_for(site="A")


def test_to_csv_leaves_out_empty_optional_columns(images: Path) -> None:
    m = load_manifest(_write(images / "m.csv", "path,site,subject,session\na.nii.gz,S,1,\n"))
    out = m.to_csv(images / "out.csv")
    assert out.read_text().splitlines() == ["path,site,subject", "a.nii.gz,S,1"]


def test_from_rows_and_output_relpath(tmp_path: Path) -> None:
    a = _nifti(tmp_path / "data" / "s1" / "a.nii")
    b = _nifti(tmp_path / "data" / "s2" / "b.nii")
    m = Manifest.from_rows([
        {"path": a, "site": "S1", "subject": "a", "age": 20},
        ManifestRow(path=b, relative_path="s2/b.nii", site="S2", subject="b", modality="T1w", extras={"age": "21"}),
    ])
    assert m.root == tmp_path / "data"
    assert [r.relative_path for r in m] == ["s1/a.nii", "s2/b.nii"]
    assert [r.extras["age"] for r in m] == ["20", "21"]
    assert validate_manifest(m) == ["row 1: empty modality (other rows name one)"]
    assert m[0].output_relpath() == Path("s1/a.nii")
    moved = Manifest.from_rows(list(m), root=tmp_path)  # spellings follow the new root
    assert [r.relative_path for r in moved] == ["data/s1/a.nii", "data/s2/b.nii"]
    assert moved == m
    outside = ManifestRow(path=Path("/x/y/z.nii"), relative_path="../y/z.nii", site="S", subject="z")
    assert outside.output_relpath() == Path("x/y/z.nii")
    absolute = ManifestRow(path=Path("/x/y/z.nii"), relative_path="/x/y/z.nii", site="S", subject="z")
    assert absolute.output_relpath() == Path("x/y/z.nii")


def test_absolute_path_below_manifest_folder_becomes_relative(images: Path) -> None:
    m = load_manifest(_write(images / "m.csv", f"path,site,subject\n{images / 'a.nii.gz'},S,1\n"))
    assert m[0].relative_path == "a.nii.gz"
    assert m[0].path == images / "a.nii.gz"


def test_validate_empty_manifest() -> None:
    m = Manifest.from_rows([], root=".")
    assert len(m) == 0
    assert validate_manifest(m) == ["manifest has no data rows"]


# -- read_cohort ------------------------------------------------------------------------------------------


def test_read_cohort_csv(cohort: Path) -> None:
    assert read_cohort(cohort / "manifest.csv") == load_manifest(cohort / "manifest.csv")


def test_read_cohort_folder_with_manifest_uses_it(cohort: Path) -> None:
    m = read_cohort(cohort)
    assert len(m) == 8 and m.sites == ["A", "B"]  # not 16 loose images: the ground truths are not subjects


def test_read_cohort_plain_folder(tmp_path: Path) -> None:
    folder = tmp_path / "scans"
    _nifti(folder / "sub-01.nii.gz")
    _nifti(folder / "sub-02.nii")
    _nifti(folder / "nested" / "sub-03.nii.gz")
    _nifti(folder / "x" / "sub-01.nii.gz")  # same stem as the top-level one
    _write(folder / "notes.txt", "not an image")
    _write(folder / ".hidden.nii.gz", "temporary")
    m = read_cohort(folder)
    assert [r.relative_path for r in m] == ["nested/sub-03.nii.gz", "sub-01.nii.gz", "sub-02.nii",
                                            "x/sub-01.nii.gz"]
    assert [r.subject for r in m] == ["sub-03", "sub-01", "sub-02", "x/sub-01"]
    assert m.sites == ["unknown"]
    assert read_cohort(folder, default_site="S9").sites == ["S9"]


def test_read_cohort_single_file(tmp_path: Path) -> None:
    f = _nifti(tmp_path / "brain.nii.gz")
    m = read_cohort(f)
    assert len(m) == 1
    assert (m[0].path, m[0].relative_path, m[0].subject, m[0].site) == (f, "brain.nii.gz", "brain", "unknown")


def test_read_cohort_bids(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    _write(root / "dataset_description.json", json.dumps({"Name": "t", "BIDSVersion": "1.8.0"}))
    _nifti(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    m = read_cohort(root)
    assert [(r.subject, r.modality, r.site, r.relative_path) for r in m] == [
        ("01", "T1w", "unknown", "sub-01/anat/sub-01_T1w.nii.gz")]
    with pytest.raises(InvalidInputError, match="no BIDS images"):  # BIDS options reach manifest_from_bids
        read_cohort(root, suffixes=("FLAIR",))


def test_read_cohort_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        read_cohort(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match=r"no NIfTI files \(.nii, .nii.gz\) in this folder"):
        read_cohort(tmp_path / "empty")
    _nifti(tmp_path / "one.nii")
    with pytest.raises(ManifestError, match="unknown site 'unknown'"):
        read_cohort(tmp_path / "one.nii", known_sites=["A"])
