"""BIDS dataset -> cohort manifest through pybids: subject, session, modality, site and participants covariates."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pandas as pd

from neuroattn.errors import ConfigError, InvalidInputError, ManifestError
from neuroattn.io.manifest import BASE_COLUMNS, REPEAT_COLUMNS, UNKNOWN_SITE, Manifest

SiteRule = str | Callable[[Mapping[str, str]], str] | None
SITE_RULES = ("session", "acquisition", "participants:<column>", "entity:<name>", "metadata:<Key>")


def _check_dataset(root: Path) -> None:
    if not root.exists():
        raise InvalidInputError("BIDS folder not found", root)
    if not root.is_dir():
        raise InvalidInputError("expected a BIDS dataset folder, found a file", root)
    description = root / "dataset_description.json"
    if not description.is_file():
        raise InvalidInputError("not a BIDS dataset (no dataset_description.json)", root)
    try:
        content = json.loads(description.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"unreadable dataset_description.json ({exc})", root) from None
    if not isinstance(content, dict):
        raise InvalidInputError("dataset_description.json is not a JSON object", root)


def _column_name(name: str) -> str:
    """The manifest spelling of a participants.tsv column (as :func:`load_manifest` would read it)."""
    return str(name).strip().lower().replace(" ", "_").replace("-", "_")


def read_participants(root: str | Path) -> pd.DataFrame:
    """``participants.tsv`` as text indexed by subject label (``sub-01`` -> ``01``); ``n/a`` becomes ``""``.

    Returns an empty frame when the file is absent. Column names are lower-cased, spaces -> underscores.
    """
    path = Path(root) / "participants.tsv"
    if not path.is_file():
        return pd.DataFrame(index=pd.Index([], name="subject", dtype=object))
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"unreadable participants.tsv ({str(exc).strip()})", path) from None
    table.columns = [_column_name(c) for c in table.columns]
    if "participant_id" not in table.columns:
        raise InvalidInputError("participants.tsv has no participant_id column", path)
    table = table.map(lambda v: "" if v.strip() == "n/a" else v.strip())
    labels = table.pop("participant_id").str.removeprefix("sub-")
    repeated = sorted(set(labels[labels.duplicated()]))
    if repeated:
        raise InvalidInputError(f"participant(s) listed twice in participants.tsv: {', '.join(repeated)}", path)
    table.index = pd.Index(labels, name="subject", dtype=object)
    return table


def _site_function(rule: SiteRule, participants: pd.DataFrame, root: Path) -> tuple[Callable, str | None]:
    """``(entities -> site label, participants column used as site or None)`` for a ``site_from`` rule."""
    if callable(rule):
        return (lambda ent: str(rule(ent))), None
    if rule is None:
        if "site" in participants.columns:
            rule = "participants:site"
        else:
            return (lambda ent: ent.get("session") or UNKNOWN_SITE), None
    if not isinstance(rule, str):
        raise ConfigError(f"'site_from' must be a string, a callable or None. {rule!r} was provided.")
    kind, _, name = rule.partition(":")
    if rule in ("session", "acquisition"):
        return (lambda ent: ent.get(rule, "")), None
    if kind == "entity" and name:
        return (lambda ent: ent.get(name, "")), None
    if kind == "metadata" and name:
        return (lambda ent: str(ent.get(f"metadata:{name}", ""))), None
    if kind == "participants" and name:
        column = _column_name(name)
        if column not in participants.columns:
            have = ", ".join(participants.columns) or "no participants.tsv"
            raise InvalidInputError(f"participants.tsv has no column '{column}' for the site (have: {have})",
                                    root / "participants.tsv")
        sites = participants[column]
        return (lambda ent: sites.get(ent.get("subject", ""), "")), column
    raise ConfigError(f"'site_from' must be one of {list(SITE_RULES)} or a callable. {rule!r} was provided.")


def _layout(root: Path, with_metadata: bool):
    import bids  # pybids is slow to import; only BIDS input pays for it
    from bids.layout import BIDSLayoutIndexer

    try:
        return bids.BIDSLayout(str(root), validate=False,
                               indexer=BIDSLayoutIndexer(validate=False, index_metadata=with_metadata))
    except Exception as exc:  # pybids raises many kinds for a broken tree
        raise InvalidInputError(f"pybids could not index this BIDS dataset ({exc})", root) from None


def manifest_from_bids(
    root: str | Path,
    *,
    datatype: str = "anat",
    suffixes: str | Iterable[str] = ("T1w", "T2w", "FLAIR"),
    site_from: SiteRule = None,
    extension: str | Iterable[str] = (".nii", ".nii.gz"),
) -> Manifest:
    """Read a BIDS dataset into a :class:`Manifest`, one row per matching image.

    Subject and session are the BIDS labels without prefixes (``sub-01`` -> ``01``), modality is the BIDS
    suffix (``T1w``), paths are relative to ``root``. Every participants.tsv column becomes a covariate
    (``n/a`` -> ``""``; a column named like a manifest column, e.g. ``site`` when the site comes from
    elsewhere, gets a ``participants_`` prefix); ``acquisition`` and ``run`` entities are kept when any file has them.

    Parameters
    ----------
    root
        Dataset folder (holds ``dataset_description.json``).
    datatype, suffixes, extension
        Which files to take (default: anatomical T1w, T2w and FLAIR NIfTI images).
    site_from
        Where the site label comes from:

        - ``None`` (default): participants.tsv column ``site`` when present, else the session label, else
          ``"unknown"``;
        - ``"session"`` / ``"acquisition"`` / ``"entity:<name>"``: that BIDS entity;
        - ``"participants:<column>"``: a participants.tsv column;
        - ``"metadata:<Key>"``: a JSON sidecar field, e.g. ``"metadata:DeviceSerialNumber"``;
        - a callable taking the file's entities (plus ``"path"``) and returning the label.

    Raises
    ------
    InvalidInputError
        ``root`` is not a BIDS dataset or no file matches.
    ManifestError
        Some images get no site label (all of them listed).
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    _check_dataset(root)
    suffixes = [suffixes] if isinstance(suffixes, str) else list(suffixes)
    extensions = [extension] if isinstance(extension, str) else list(extension)
    extensions = [e if e.startswith(".") else f".{e}" for e in extensions]
    participants = read_participants(root)
    site_of, site_column = _site_function(site_from, participants, root)
    with_metadata = isinstance(site_from, str) and site_from.startswith("metadata:")
    layout = _layout(root, with_metadata)
    files = layout.get(datatype=datatype, suffix=suffixes, extension=extensions)
    if not files:
        images = layout.get(extension=extensions)
        present = sorted({f"{f.entities.get('datatype', '?')}/{f.entities['suffix']}"
                          for f in images if "suffix" in f.entities})
        found = (f"found datatype/suffix: {', '.join(present)}" if present
                 else f"the dataset has no {'/'.join(extensions)} images")
        raise InvalidInputError(
            f"no BIDS images with datatype '{datatype}', suffix {'/'.join(suffixes)} and extension "
            f"{'/'.join(extensions)} ({found})", root)
    # A participants column named like a manifest column (say 'site' while the site comes from elsewhere)
    # is kept under a 'participants_' prefix.
    covariates = {(f"participants_{c}" if c in BASE_COLUMNS else c): c
                  for c in participants.columns if c != site_column}
    # Copied when any selected file carries them, so repeated scans stay apart.
    entity_extras = [e for e in REPEAT_COLUMNS
                     if e not in covariates and any(e in f.get_entities() for f in files)]
    rows, problems = [], []
    for f in sorted(files, key=lambda f: f.path):
        entities = {k: str(v) for k, v in f.get_entities().items()}
        entities["path"] = f.path
        if with_metadata:
            entities.update({f"metadata:{k}": str(v) for k, v in f.get_metadata().items()})
        subject = entities.get("subject", "")
        site = str(site_of(entities)).strip()
        rel = Path(f.path).relative_to(root).as_posix()
        if not site:
            problems.append(f"{rel}: no site label ({_describe(site_from)})")
        row = {"path": f.path, "relative_path": rel, "site": site, "subject": subject,
               "session": entities.get("session", ""), "modality": entities.get("suffix", "")}
        known = subject in participants.index
        row.update({name: participants.at[subject, c] if known else "" for name, c in covariates.items()})
        row.update({e: entities.get(e, "") for e in entity_extras})
        rows.append(row)
    if problems:
        raise ManifestError(problems, root)
    rows.sort(key=lambda r: (r["subject"], r["session"], r["modality"], r["relative_path"]))
    return Manifest.from_rows(rows, root=root, source=root)


def _describe(rule: SiteRule) -> str:
    if rule is None:
        return "participants.tsv column 'site' is empty or the subject is not listed"
    if callable(rule):
        return "site_from returned an empty label"
    return f"site_from={rule!r} gives an empty label"
