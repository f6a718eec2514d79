"""Seconds per whole volume for SA-CycleGAN-2.5D apply (load → slices → generator → fused volume → atomic save).

Weights are one optimizer step from random (timing does not depend on them; apply refuses unfitted models);
the architecture is the demo's (base 16) and the published one (base 64). Prints a table and writes
``harmonize-apply-<device>.json`` under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import torch

from neuroattn.data.synth_mri import SynthMRIConfig, synthesize_mri_cohort
from neuroattn.harmonize.apply import apply_harmonizer
from neuroattn.harmonize.base import SingleSubjectSiteWarning
from neuroattn.harmonize.model_harmonizer import SACycleGANHarmonizer
from neuroattn.io.atomic import atomic_write_text
from neuroattn.io.manifest import load_manifest

MODALITIES = ("T1w", "T2w", "FLAIR")


def _time_apply(checkpoint: Path, source: Path, out: Path, planes: str, repeats: int) -> float:
    best = float("inf")
    for i in range(repeats):
        start = time.perf_counter()
        report = apply_harmonizer(checkpoint, source, out / f"{planes}-{i}", planes=planes, progress=False)
        if report.failed:
            raise RuntimeError(report.failed[0].reason)
        best = min(best, time.perf_counter() - start)
    return best


def run(resolutions: list[float], bases: list[int], planes: list[str], device: str, repeats: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mm in resolutions:
            cohort = Path(tmp) / f"cohort-{mm}"
            synthesize_mri_cohort(cohort, SynthMRIConfig(n_subjects=1, n_sites=2, voxel_size=mm, seed=0,
                                                         modalities=MODALITIES), progress=False)
            manifest = load_manifest(cohort / "manifest.csv")
            source = manifest.rows_for(site="siteB").to_csv(cohort / "siteB.csv")
            shape = tuple(nib.load(manifest[0].path).shape)
            for base in bases:
                harmonizer = SACycleGANHarmonizer(target_site="siteA", base_channels=base, max_steps=1, batch_size=1,
                                                  crop_size=64, warmup_steps=0,
                                                  device=device, progress=False)
                with warnings.catch_warnings():  # one subject per site is enough for timing
                    warnings.simplefilter("ignore", SingleSubjectSiteWarning)
                    harmonizer.fit(manifest)
                checkpoint = harmonizer.save(Path(tmp) / f"model-{mm}-{base}")
                for plane in planes:
                    seconds = _time_apply(checkpoint, source, Path(tmp) / f"out-{mm}-{base}", plane, repeats)
                    rows.append({"voxel_mm": mm, "shape": "x".join(map(str, shape)), "base_channels": base,
                                 "planes": plane, "modalities": len(MODALITIES),
                                 "seconds_per_subject": round(seconds, 2),
                                 "seconds_per_volume": round(seconds / len(MODALITIES), 2)})
                    print(f"{mm:>4} mm {rows[-1]['shape']:>12} base {base:>3} {plane:>6}: "
                          f"{rows[-1]['seconds_per_volume']:.2f} s/volume", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--resolutions", default="2,1", help="voxel sizes in mm, comma-separated")
    parser.add_argument("--bases", default="16,64", help="generator base channels, comma-separated")
    parser.add_argument("--planes", default="axial,all", help="'axial' and/or 'all' (3-plane fusion)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows = run([float(v) for v in args.resolutions.split(",")], [int(v) for v in args.bases.split(",")],
               args.planes.split(","), args.device, args.repeats)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    payload = {"benchmark": "harmonize-apply", "device": device, "torch": torch.__version__,
               "platform": platform.platform(), "rows": rows,
               "weights": "untrained: 1 optimizer step from random init (timing only)"}
    args.out.mkdir(parents=True, exist_ok=True)
    path = atomic_write_text(args.out / f"harmonize-apply-{'cuda' if args.device == 'cuda' else 'cpu'}.json",
                             json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
