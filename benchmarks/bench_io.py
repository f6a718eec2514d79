"""NIfTI IO speed: load (with validation) and atomic save of float32 volumes, .nii vs .nii.gz, per size."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from neuroattn.io.atomic import atomic_write_text
from neuroattn.io.nifti import load_volume, save_volume, volume_from_array

SIZES = (64, 128, 192)  # cube edge in voxels; 192³ ≈ a 1 mm brain crop


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(repeats: int = 3) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for edge in SIZES:
            vol = volume_from_array(rng.normal(size=(edge, edge, edge)).astype(np.float32), voxel_size=1.0)
            megabytes = vol.data.nbytes / 1e6
            for suffix in (".nii", ".nii.gz"):
                path = Path(tmp) / f"v{edge}{suffix}"
                save_s = _best_of(lambda path=path, vol=vol: save_volume(vol, path), repeats)
                load_s = _best_of(lambda path=path: load_volume(path), repeats)
                rows.append(
                    {
                        "shape": f"{edge}^3",
                        "format": suffix,
                        "megabytes": round(megabytes, 1),
                        "save_s": round(save_s, 4),
                        "load_s": round(load_s, 4),
                        "load_MB_per_s": round(megabytes / load_s, 1),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = run(args.repeats)
    header = f"{'shape':>8} {'format':>8} {'MB':>7} {'save s':>8} {'load s':>8} {'load MB/s':>10}"
    print(header)
    for r in rows:
        print(
            f"{r['shape']:>8} {r['format']:>8} {r['megabytes']:>7} {r['save_s']:>8} {r['load_s']:>8} "
            f"{r['load_MB_per_s']:>10}"
        )
    atomic_write_text(args.out / "io.json", json.dumps({"benchmark": "nifti_io", "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out / 'io.json'}")


if __name__ == "__main__":
    main()
