"""Cohort manifests: a CSV of image paths with site, subject, session, modality and covariates, validated."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd

from neuroattn.errors import InvalidInputError, ManifestError
from neuroattn.io.atomic import atomic_path
from neuroattn.io.nifti import NIFTI_SUFFIXES

REQUIRED_COLUMNS = ("path", "site", "subject")
ID_COLUMNS = ("session", "modality")
# Columns that are not covariates but further images beside the main one (resolved like ``path``).
PATH_LIKE_COLUMNS = frozenset({"ground_truth", "mask"})
UNKNOWN_SITE = "unknown"
# Extra columns that tell repeated scans of one subject, session and modality apart (BIDS acq-/run- entities).
REPEAT_COLUMNS = ("acquisition", "run")
MANIFEST_SUFFIXES = (".csv", ".tsv")
# Spellings other tools use for our column names; applied only when the canonical name is absent.
COLUMN_ALIASES = {
    "file": "path",
    "filepath": "path",
    "filename": "path",
    "image": "path",
    "subject_id": "subject",
    "participant_id": "subject",
    "participant": "subject",
    "scanner": "site",
    "session_id": "session",
    "ses": "session",
    "contrast": "modality",
    "suffix": "modality",
}
BASE_COLUMNS = ("path", "relative_path", "site", "subject", "session", "modality")


def is_path_column(name: str) -> bool:
    """Whether an extra column holds file paths (``ground_truth``, ``mask`` or any ``*_path``)."""
    return name in PATH_LIKE_COLUMNS or name.endswith("_path")


def nifti_stem(path: str | Path) -> str:
    """File name without its NIfTI suffix: ``sub-01_T1w.nii.gz`` -> ``sub-01_T1w``."""
    name = Path(path).name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _absolute(text: str | Path, root: Path) -> Path:
    """Absolute, lexically normalised path; relative text is taken relative to ``root`` (symlinks kept)."""
    p = Path(text).expanduser()
    return Path(os.path.abspath(p if p.is_absolute() else root / p))


def relative_text(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` in POSIX form when it lies below ``root``, else its absolute form."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class ManifestRow:
    """One image of a cohort.

    ``path`` is absolute; ``relative_path`` is the path as the manifest wrote it (relative to the manifest's
    folder when it was relative), which output folders mirror. ``session`` and ``modality`` are ``""`` when
    the manifest has none. ``extras`` holds every further column (covariates such as age and sex as text;
    path-like columns such as ``ground_truth`` and ``mask`` as absolute paths, ``""`` when empty).
    """

    path: Path
    relative_path: str
    site: str
    subject: str
    session: str = ""
    modality: str = ""
    extras: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str, str]:
        """``(subject, site, session, modality)``: what must be unique across a cohort."""
        return (self.subject, self.site, self.session, self.modality)

    def output_relpath(self) -> Path:
        """A relative path for this image's outputs that never leaves the output folder.

        The manifest's own relative form when it stays below the manifest folder; otherwise the absolute
        path without its anchor (``/data/a/x.nii`` -> ``data/a/x.nii``), which keeps distinct inputs distinct.
        """
        rel = PurePosixPath(self.relative_path.replace("\\", "/"))
        if not rel.is_absolute() and ".." not in rel.parts and not Path(self.relative_path).is_absolute():
            return Path(*rel.parts)
        return self.path.relative_to(self.path.anchor)


class Manifest:
    """A cohort: a table with one row per image.

    Columns of :attr:`table`: ``path`` (absolute :class:`~pathlib.Path`), ``relative_path`` (text as written),
    ``site``, ``subject``, ``session``, ``modality`` (text, ``""`` when absent), then extra columns.

    Parameters
    ----------
    table
        Rows with at least ``path``, ``site`` and ``subject``; other base columns are filled in.
    root
        Folder that relative paths are relative to (the manifest file's folder).
    source
        File or folder the cohort was read from, for messages.
    """

    def __init__(self, table: pd.DataFrame, root: str | Path, source: str | Path | None = None) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self.source = None if source is None else Path(source)
        self.table = self._normalise(table)

    def _normalise(self, table: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"manifest table lacks column(s) {', '.join(missing)}")
        table = table.reset_index(drop=True).copy()
        paths = [_absolute(p, self.root) for p in table["path"]]
        if "relative_path" not in table.columns:
            table["relative_path"] = [relative_text(p, self.root) for p in paths]
        table["path"] = pd.Series(paths, dtype=object)
        for col in ("site", "subject", "session", "modality", "relative_path"):
            values = table[col] if col in table.columns else pd.Series([""] * len(table))
            table[col] = pd.Series(["" if pd.isna(v) else str(v).strip() for v in values], dtype=object)
        # A spelling that no longer names the file under this root (rows moved between cohorts) is redone.
        table["relative_path"] = [
            rel if rel == "" or _absolute(rel, self.root) == p else relative_text(p, self.root)
            for rel, p in zip(table["relative_path"], paths, strict=True)
        ]
        for col in self._extra_columns(table):
            text = ["" if pd.isna(v) else str(v).strip() for v in table[col]]
            if is_path_column(col):
                text = [v and str(_absolute(v, self.root)) for v in text]
            table[col] = pd.Series(text, dtype=object)
        return table[[*BASE_COLUMNS, *self._extra_columns(table)]]

    @staticmethod
    def _extra_columns(table: pd.DataFrame) -> list[str]:
        return [c for c in table.columns if c not in BASE_COLUMNS]

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[ManifestRow | Mapping[str, object]],
        *,
        root: str | Path | None = None,
        source: str | Path | None = None,
    ) -> Manifest:
        """Build a manifest from :class:`ManifestRow` objects or mappings.

        A mapping needs ``path``, ``site`` and ``subject``; ``session``, ``modality`` and ``relative_path`` are
        optional and every other key becomes an extra column. ``root`` defaults to the deepest folder that
        holds every absolute path (the current folder when all paths are relative).
        """
        records: list[dict[str, object]] = []
        for row in rows:
            if isinstance(row, ManifestRow):
                rec: dict[str, object] = {
                    "path": row.path, "relative_path": row.relative_path, "site": row.site,
                    "subject": row.subject, "session": row.session, "modality": row.modality, **row.extras,
                }
            else:
                rec = dict(row)
            records.append(rec)
        if root is None:
            absolute = [str(r["path"]) for r in records if Path(str(r["path"])).expanduser().is_absolute()]
            parents = [os.path.dirname(os.path.abspath(Path(p).expanduser())) for p in absolute]
            root = os.path.commonpath(parents) if parents else Path.cwd()
        columns = list(dict.fromkeys(["path", "site", "subject", *(k for r in records for k in r)]))
        table = pd.DataFrame.from_records(records, columns=columns)
        if "relative_path" in table.columns and table["relative_path"].isna().any():
            root_abs = Path(os.path.abspath(root))
            table["relative_path"] = [
                relative_text(_absolute(str(p), root_abs), root_abs) if pd.isna(rel) else rel
                for p, rel in zip(table["path"], table["relative_path"], strict=True)
            ]
        return cls(table, root=root, source=source)

    # -- queries ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.table)

    def __iter__(self) -> Iterator[ManifestRow]:
        extra = self.extra_columns
        for rec in self.table.to_dict("records"):
            yield self._row(rec, extra)

    def __getitem__(self, index: int) -> ManifestRow:
        return self._row(self.table.iloc[index].to_dict(), self.extra_columns)

    @staticmethod
    def _row(rec: dict, extra: list[str]) -> ManifestRow:
        return ManifestRow(
            path=rec["path"], relative_path=rec["relative_path"], site=rec["site"], subject=rec["subject"],
            session=rec["session"], modality=rec["modality"], extras={c: rec[c] for c in extra},
        )

    def __eq__(self, other: object) -> bool:
        """Same images with the same labels and extras, in the same order (roots may differ)."""
        if not isinstance(other, Manifest):
            return NotImplemented
        cols = [c for c in self.table.columns if c != "relative_path"]
        if cols != [c for c in other.table.columns if c != "relative_path"]:
            return False
        return self.table[cols].astype(str).equals(other.table[cols].astype(str))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Manifest({len(self)} images, {len(self.subjects)} subjects, sites={self.sites}, "
                f"modalities={self.modalities}, root={str(self.root)!r})")

    @property
    def extra_columns(self) -> list[str]:
        """Columns beyond the base ones, in file order (covariates and path-like columns)."""
        return self._extra_columns(self.table)

    @property
    def covariate_columns(self) -> list[str]:
        """Extra columns that are not paths (age, sex, ...)."""
        return [c for c in self.extra_columns if not is_path_column(c)]

    @property
    def sites(self) -> list[str]:
        """Distinct site labels, sorted."""
        return sorted(set(self.table["site"]))

    @property
    def subjects(self) -> list[str]:
        """Distinct subject labels, sorted."""
        return sorted(set(self.table["subject"]))

    @property
    def modalities(self) -> list[str]:
        """Distinct non-empty modality labels, sorted."""
        return sorted(set(self.table["modality"]) - {""})

    @property
    def paths(self) -> list[Path]:
        """Absolute image paths in row order."""
        return list(self.table["path"])

    def rows_for(
        self,
        *,
        site: str | Iterable[str] | None = None,
        subject: str | Iterable[str] | None = None,
        session: str | Iterable[str] | None = None,
        modality: str | Iterable[str] | None = None,
    ) -> Manifest:
        """The sub-cohort whose labels match every given filter (a label or a collection of labels)."""
        keep = pd.Series(True, index=self.table.index)
        for col, want in (("site", site), ("subject", subject), ("session", session), ("modality", modality)):
            if want is None:
                continue
            wanted = {want} if isinstance(want, str) else {str(w) for w in want}
            keep &= self.table[col].isin(wanted)
        return Manifest(self.table[keep], root=self.root, source=self.source)

    def covariates(self, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Covariates as a frame, one row per image; a column whose filled cells all parse becomes numeric.

        Empty cells become NaN in numeric columns and stay ``""`` in text columns.
        """
        cols = self.covariate_columns if columns is None else list(columns)
        unknown = [c for c in cols if c not in self.table.columns]
        if unknown:
            raise KeyError(f"no covariate column(s) {', '.join(unknown)}; have {', '.join(self.covariate_columns)}")
        out = {}
        for col in cols:
            text = self.table[col].astype(str)
            filled = text[text != ""]
            numeric = pd.to_numeric(filled, errors="coerce")
            if len(filled) and numeric.notna().all():
                out[col] = pd.to_numeric(text.where(text != ""), errors="coerce")
            else:
                out[col] = text
        return pd.DataFrame(out, index=self.table.index)

    # -- writing ------------------------------------------------------------------------------------------

    def to_frame(self, folder: str | Path | None = None) -> pd.DataFrame:
        """The table as it is written to a manifest in ``folder`` (default: :attr:`root`): paths as text.

        Paths below ``folder`` are written relative to it; the manifest's own relative form is kept when
        ``folder`` is its root; other paths are written absolute. Session/modality columns that are empty
        everywhere are left out.
        """
        folder = self.root if folder is None else Path(os.path.abspath(folder))
        t = self.table
        same = folder == self.root
        paths = list(t["relative_path"]) if same else [relative_text(p, folder) for p in t["path"]]
        out = pd.DataFrame({"path": paths, "site": t["site"], "subject": t["subject"]})
        for col in ID_COLUMNS:
            if (t[col] != "").any():
                out[col] = t[col]
        for col in self.extra_columns:
            if is_path_column(col):
                out[col] = ["" if v == "" else relative_text(Path(v), folder) for v in t[col]]
            else:
                out[col] = t[col]
        return out

    def to_csv(self, path: str | Path) -> Path:
        """Write the manifest atomically as CSV; paths below the file's folder are written relative to it."""
        path = Path(path)
        frame = self.to_frame(path.parent)
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index=False, sep=sep, lineterminator="\n")
        return path


# -- loading and validation ------------------------------------------------------------------------------


def _read_table(path: Path) -> pd.DataFrame | None:
    """Every cell of the CSV/TSV as text, header included as row 0; None when the file is empty."""
    if not path.exists():
        raise InvalidInputError("manifest file not found", path)
    if path.is_dir():
        raise InvalidInputError("is a directory, expected a manifest CSV file", path)
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        raise InvalidInputError("is a NIfTI image, not a manifest CSV (use read_cohort for images)", path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read manifest ({exc.strerror})", path) from None
    if b"\x00" in raw[:65536]:
        raise InvalidInputError("not a CSV file (binary content)", path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError("not a CSV file (not UTF-8 text)", path) from None
    if not text.strip():
        return None
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        # header=None keeps duplicate column names visible; blank lines are kept so row numbers match the file.
        return pd.read_csv(io.StringIO(text), sep=sep, header=None, dtype=str, keep_default_na=False,
                           skip_blank_lines=False, quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise InvalidInputError(f"not a readable CSV file ({str(exc).strip()})", path) from None


def _canonical_columns(header: list[str]) -> tuple[list[str], list[str]]:
    """Lower-cased, stripped column names with aliases applied; plus problems (duplicate/empty names)."""
    names = [str(h).strip().lower().replace(" ", "_").replace("-", "_") for h in header]
    canonical = []
    for name in names:
        alias = COLUMN_ALIASES.get(name)
        canonical.append(alias if alias is not None and alias not in names else name)
    problems = []
    seen: set[str] = set()
    for i, name in enumerate(canonical, start=1):
        if name == "":
            problems.append(f"column {i} has no name")
        elif name in seen:
            problems.append(f"column '{name}' appears more than once")
        seen.add(name)
    return canonical, problems


def _rows_text(numbers: Iterable[int]) -> str:
    nums = sorted(numbers)
    return ("row " if len(nums) == 1 else "rows ") + ", ".join(str(n) for n in nums)


def validate_manifest(
    manifest: Manifest,
    *,
    known_sites: Iterable[str] | None = None,
    expected_modalities: Iterable[str] | None = None,
    require_files: bool = True,
    row_numbers: list[int] | None = None,
) -> list[str]:
    """Every problem of a cohort as short lines naming the row (``row 1`` is the first data row).

    Checks: empty path/site/subject, missing files (``path`` and path-like extras, when ``require_files``),
    duplicates (same file, or same subject+site+session+modality, unless ``acquisition``/``run`` columns tell
    repeated scans apart), sites outside ``known_sites``,
    modalities outside ``expected_modalities``, a modality named on some rows but empty on others, and
    subject/session groups lacking a modality that other groups have. An empty cohort is a problem too.
    """
    t = manifest.table
    numbers = row_numbers if row_numbers is not None else list(range(1, len(t) + 1))
    if len(t) == 0:
        return ["manifest has no data rows"]
    problems: list[tuple[int, str]] = []  # (row, message) so the report reads in file order
    known = None if known_sites is None else {str(s).strip() for s in known_sites}
    expected = None if expected_modalities is None else {str(m).strip() for m in expected_modalities}
    any_modality = (t["modality"] != "").any()
    if expected is not None and not any_modality:
        problems.append((0, f"no modality given, expected one of {', '.join(sorted(expected))} per row"))
        expected = None
    first_by_path: dict[Path, int] = {}
    first_by_key: dict[tuple[str, ...], int] = {}
    for n, row in zip(numbers, manifest, strict=True):
        if row.relative_path == "":
            problems.append((n, f"row {n}: empty path"))
        elif require_files and not row.path.is_file():
            what = "is a directory, not a file" if row.path.is_dir() else "file not found"
            problems.append((n, f"row {n}: {what}: {row.relative_path}"))
        if require_files:
            for col, value in row.extras.items():
                if is_path_column(col) and value and not Path(value).is_file():
                    problems.append((n, f"row {n}: {col} file not found: {value}"))
        for col in ("site", "subject"):
            if getattr(row, col) == "":
                problems.append((n, f"row {n}: empty {col}"))
        if known is not None and row.site and row.site not in known:
            problems.append((n, f"row {n}: unknown site '{row.site}' (known: {', '.join(sorted(known))})"))
        if expected is not None and row.modality not in expected:
            shown = f"'{row.modality}'" if row.modality else "empty modality"
            problems.append((n, f"row {n}: modality {shown} not expected (expected: {', '.join(sorted(expected))})"))
        elif expected is None and any_modality and row.modality == "":
            problems.append((n, f"row {n}: empty modality (other rows name one)"))
        if row.relative_path:
            if row.path in first_by_path:
                problems.append((n, f"row {n}: duplicate of row {first_by_path[row.path]} (same path)"))
                continue
            first_by_path[row.path] = n
        if row.subject and row.site:
            key = (*row.key, *(row.extras.get(c, "") for c in REPEAT_COLUMNS))
            if key in first_by_key:
                problems.append((n, f"row {n}: duplicate of row {first_by_key[key]} "
                                    "(same subject, site, session and modality)"))
            else:
                first_by_key[key] = n
    problems.extend(_missing_modalities(t, numbers, expected))
    return [msg for _, msg in sorted(problems, key=lambda p: p[0])]


def _missing_modalities(t: pd.DataFrame, numbers: list[int], expected: set[str] | None) -> list[tuple[int, str]]:
    """Subject/session groups lacking a modality that other groups of the cohort have."""
    named = t["modality"] != ""
    if expected is not None:
        named &= t["modality"].isin(expected)
    if not named.any():
        return []
    everything = set(t.loc[named, "modality"])
    out = []
    group_cols = ["site", "subject", "session"]
    for (site, subject, session), idx in t[named].groupby(group_cols, sort=False).groups.items():
        lacking = everything - set(t.loc[idx, "modality"])
        if lacking:
            rows = [numbers[t.index.get_loc(i)] for i in idx]
            where = f"subject '{subject}' (site '{site}'" + (f", session '{session}')" if session else ")")
            out.append((min(rows), f"{_rows_text(rows)}: {where} lacks modality {', '.join(sorted(lacking))} "
                                   f"that other subjects have"))
    return out


def load_manifest(
    path: str | Path,
    *,
    known_sites: Iterable[str] | None = None,
    expected_modalities: Iterable[str] | None = None,
    require_files: bool = True,
) -> Manifest:
    """Read and validate a cohort manifest CSV (or TSV).

    Columns ``path,site,subject`` are required; ``session`` and ``modality`` are optional; every other column
    is kept as an extra (covariates, or paths for ``ground_truth``/``mask``/``*_path``). Column names are
    matched case-insensitively and a few common aliases are accepted (``participant_id``, ``scanner`` ...).
    Relative paths are relative to the manifest's folder.

    Raises
    ------
    InvalidInputError
        The file is missing, unreadable or not a CSV.
    ManifestError
        Listing every problem at once (see :func:`validate_manifest`); a missing required column is reported
        alone, since rows cannot be checked without it.
    """
    path = Path(path)
    raw = _read_table(path)
    if raw is None or len(raw) == 0:
        raise ManifestError(["manifest is empty (no header, no rows)"], path)
    columns, problems = _canonical_columns(list(raw.iloc[0]))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        problems.append(f"missing required column(s): {', '.join(missing)} "
                        f"(found: {', '.join(c for c in columns if c) or 'none'})")
    if problems:
        raise ManifestError(problems, path)
    body = raw.iloc[1:].fillna("").astype(str)
    body.columns = columns
    numbers = list(range(1, len(body) + 1))
    blank = body.apply(lambda r: all(v.strip() == "" for v in r), axis=1)
    numbers = [n for n, b in zip(numbers, blank, strict=True) if not b]
    body = body[~blank.to_numpy()]
    if len(body) == 0:
        raise ManifestError(["manifest has a header but no data rows"], path)
    body = body.map(str.strip)
    root = Path(os.path.abspath(path)).parent
    # Relative paths keep the manifest's spelling (outputs mirror it); absolute ones become relative to root
    # when they lie below it.
    body["relative_path"] = [p if p == "" or not Path(p).expanduser().is_absolute()
                             else relative_text(_absolute(p, root), root) for p in body["path"]]
    manifest = Manifest(body, root=root, source=path)
    problems = validate_manifest(manifest, known_sites=known_sites, expected_modalities=expected_modalities,
                                 require_files=require_files, row_numbers=numbers)
    if problems:
        raise ManifestError(problems, path)
    return manifest
