"""Harmonizer checkpoints the app can use: found in the runs folder, or trained there on the demo cohort."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroattn.harmonize.apply import HARMONIZER_DIR
from neuroattn.web.uploads import files_named

DEMO_SIZES = ("quick", "standard")


@dataclass(frozen=True)
class HarmonizerEntry:
    """A saved harmonizer as the app lists it."""

    path: Path  # the checkpoint folder (config.json + model.safetensors)
    run: Path  # the run folder holding it
    method: str
    sites: tuple[str, ...]
    target_site: str
    modalities: tuple[str, ...]
    steps: int | None  # optimizer steps for learned models, None for fitted baselines

    @property
    def trained(self) -> bool:
        return self.steps is None or self.steps > 0

    def label(self, root: Path) -> str:
        rel = self.run.relative_to(root) if self.run.is_relative_to(root) else self.run
        state = "" if self.trained else " · UNTRAINED"
        steps = f" · {self.steps} steps" if self.steps is not None else ""
        return f"{rel} · {self.method}{steps} · {'/'.join(self.modalities) or 'any modality'}{state}"


def read_entry(checkpoint: Path) -> HarmonizerEntry | None:
    """The listing of one checkpoint folder, or None when it does not hold a harmonizer."""
    try:
        stored: dict[str, Any] = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = stored.get("config") if isinstance(stored, dict) else None
    if not isinstance(config, dict):
        return None
    fitted, params = config.get("fitted"), config.get("params", {})
    if not isinstance(fitted, dict) or "method" not in config:
        return None
    steps = params.get("max_steps") if config["method"] == "sa-cyclegan" else None
    run = checkpoint.parent if checkpoint.name == HARMONIZER_DIR else checkpoint
    return HarmonizerEntry(checkpoint, run, str(config["method"]), tuple(fitted.get("sites", ())),
                           str(fitted.get("target_site", "")), tuple(fitted.get("modalities", ())),
                           None if steps is None else int(steps))


def find_harmonizers(root: Path, max_depth: int = 4) -> list[HarmonizerEntry]:
    """Every saved harmonizer under ``root`` (at most ``max_depth`` folders down), newest first."""
    found: list[HarmonizerEntry] = []
    if not root.is_dir():
        return found
    for config in files_named(root, "config.json", max_depth + 1):
        entry = read_entry(config.parent)
        if entry is not None:
            found.append(entry)
    return sorted(found, key=lambda e: (e.path / "config.json").stat().st_mtime, reverse=True)


def train_demo_harmonizer(runs_dir: Path, size: str = "quick", *, progress: bool = False) -> HarmonizerEntry:
    """Simulate the demo's two-site cohort and fit SA-CycleGAN-2.5D on it under ``runs_dir/demo-<size>``.

    ``quick`` takes about a minute on a CPU and is for trying the app (its output is not meaningful);
    ``standard`` is the ``neuroattn demo`` model without the ablation (about ten minutes on two cores).
    """
    from dataclasses import replace

    from neuroattn.errors import ConfigError
    from neuroattn.harmonize.demo_run import HarmonizationDemoConfig, sa_cyclegan_params, synthesize_demo_cohort
    from neuroattn.harmonize.pipeline import train_harmonizer
    from neuroattn.io.manifest import load_manifest

    if size not in DEMO_SIZES:
        raise ConfigError(f"'size' must be one of {list(DEMO_SIZES)}. {size!r} was provided.")
    config = HarmonizationDemoConfig.quick() if size == "quick" else replace(HarmonizationDemoConfig(), ablation=False)
    if size == "quick":
        config = replace(config, steps=20)
    run = runs_dir / f"demo-{size}"
    manifest, train_csv, _ = synthesize_demo_cohort(config, run / "cohort", progress)
    result = train_harmonizer(load_manifest(train_csv), run, method="sa-cyclegan", target_site=manifest.sites[0],
                              params=sa_cyclegan_params(config), resume=(run / "training").exists(),
                              progress=progress)
    entry = read_entry(result.checkpoint)
    assert entry is not None
    return entry
