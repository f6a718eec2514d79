"""One exception family for every user-facing failure; the CLI and app show its message as one line."""

from __future__ import annotations

from pathlib import Path


class NeuroattnError(Exception):
    """Base of every error neuroattn raises on purpose; its message is meant for the user."""


class InvalidInputError(NeuroattnError, ValueError):
    """An input file or value is unusable; the message names the file (when there is one) and the problem."""

    def __init__(self, problem: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever a library put in its message
        super().__init__(f"{self.path}: {self.problem}" if self.path is not None else self.problem)


class ManifestError(InvalidInputError):
    """A cohort manifest has problems; all of them are listed in one message."""

    def __init__(self, problems: list[str], path: str | Path | None = None) -> None:
        self.problems = list(problems)
        summary = f"{len(self.problems)} problem(s) in manifest: " + "; ".join(self.problems)
        super().__init__(summary, path)


class CheckpointError(NeuroattnError):
    """A checkpoint folder is missing, incomplete, of another model class or of an incompatible version."""


class ConfigError(NeuroattnError, ValueError):
    """A configuration value is out of range or of the wrong kind."""
