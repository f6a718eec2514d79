"""What the demo's targets ask of a harmonizer: oracle outputs on the demo's held-out subjects, judged by the
same evaluation as the demo.

The synthetic cohort knows every scanner effect, so each held-out subject can be re-simulated as a perfect
harmonizer would leave it:

- ``oracle-rescan``: a fresh scan at the reference site (every effect removed; only new noise) — the best any
  method can do;
- ``oracle-keeps-resolution``: contrast, bias field and intensity curve removed exactly, the source site's
  thick slices and blur kept (reference noise) — the best a purely intensity-based method can do;
- ``oracle-keeps-resolution-noise``: as above, also keeping the source site's stronger noise.

Prints a table and writes JSON (``--json``); the demo's own numbers are in ``harmonization.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np

from neuroattn.data.anatomy import load_template_tissues, simulate_subject
from neuroattn.data.site_effects import SiteEffects
from neuroattn.data.synth_mri import cohort_sites, scan_at_site, subject_variation
from neuroattn.harmonize.assessment import evaluate_outputs
from neuroattn.harmonize.demo_run import HarmonizationDemoConfig, demo_synth_config, synthesize_demo_cohort
from neuroattn.io.atomic import atomic_write_text
from neuroattn.io.manifest import load_manifest
from neuroattn.io.nifti import load_volume, save_volume, volume_from_array

COLUMNS = ("psnr", "ssim", "mmd_intensity", "mmd_learned", "domain_accuracy", "dice_vs_ground_truth")
_RESCAN_STREAM = 7  # seed-sequence domain for the oracle's fresh noise (never used by the cohort itself)


def oracle_effects(reference: SiteEffects, source: SiteEffects) -> dict[str, SiteEffects]:
    """Scanner effects of each oracle: the reference site's, with some of the source site's kept."""
    keep_resolution = dict(slice_thickness_mm=source.slice_thickness_mm, slice_axis=source.slice_axis,
                           blur_sigma_mm=source.blur_sigma_mm)
    return {
        "oracle-rescan": reference,
        "oracle-keeps-resolution": dataclasses.replace(reference, **keep_resolution),
        "oracle-keeps-resolution-noise": dataclasses.replace(reference, **keep_resolution,
                                                             noise_sigma=source.noise_sigma),
    }


def write_oracles(config: HarmonizationDemoConfig, cohort: Path, out: Path) -> dict[str, Path]:
    """Write each oracle's outputs in the layout ``harmonize apply`` uses (reference-site scans copied)."""
    synth = demo_synth_config(config)
    template = load_template_tissues(synth.voxel_size, synth.margin_mm)
    reference, source = cohort_sites(synth)
    folders = {name: out / name for name in oracle_effects(reference, source)}
    manifest = load_manifest(cohort / "holdout.csv")
    anatomies = {}
    for row in manifest:
        index = int(row.subject.split("-")[1])
        for name, effects in oracle_effects(reference, source).items():
            target = folders[name] / row.output_relpath()
            target.parent.mkdir(parents=True, exist_ok=True)
            if row.site == reference.name:
                shutil.copyfile(row.path, target)
                continue
            if index not in anatomies:
                anatomies[index] = simulate_subject(subject_variation(synth, index), template)
            rng = np.random.default_rng([synth.seed, _RESCAN_STREAM, index, synth.modalities.index(row.modality)])
            image = scan_at_site(anatomies[index], row.modality, effects, rng)
            save_volume(volume_from_array(image, load_volume(row.path).affine), target)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_results/harmonization_ceilings"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/harmonization-ceilings.json"))
    parser.add_argument("--n-permutations", type=int, default=1000)
    args = parser.parse_args()
    config = HarmonizationDemoConfig()
    start = time.perf_counter()
    synthesize_demo_cohort(config, args.out / "cohort", progress=False)
    folders = write_oracles(config, args.out / "cohort", args.out / "oracles")
    files = evaluate_outputs(args.out / "cohort" / "holdout.csv", folders, args.out / "evaluation" / "metrics.json",
                             n_permutations=args.n_permutations, seed=config.seed, progress=True,
                             notes=["Oracle outputs re-simulated from the known scanner effects: upper bounds, "
                                    "not methods."])
    headline, relative = files.metrics["headline"], files.metrics.get("relative_to_raw", {})
    print(f"{'output':<32}" + "".join(f"{c:>22}" for c in (*COLUMNS, "mmd_int_reduction_%")))
    rows = {}
    for name, h in headline.items():
        red = relative.get(name, {}).get("mmd_intensity_reduction_percent")
        rows[name] = {**{c: h.get(c) for c in COLUMNS}, "mmd_intensity_reduction_percent": red}
        cells = [rows[name][c] for c in (*COLUMNS, "mmd_intensity_reduction_percent")]
        print(f"{name:<32}" + "".join(f"{v:>22.4f}" if isinstance(v, float) else f"{'–':>22}" for v in cells))
    payload = {
        "benchmark": "harmonization-ceilings",
        "command": "python benchmarks/bench_harmonization_ceilings.py",
        "machine": platform.platform(),
        "demo_config": dataclasses.asdict(config),
        "wall_clock_s": round(time.perf_counter() - start, 1),
        "rows": rows,
        "relative_to_raw": relative,
        "report": str(files.report_html.relative_to(args.out)),  # under --out
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
