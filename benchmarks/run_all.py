"""Run every benchmark script in this folder; each prints its table and writes JSON under --out."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
    scripts = sorted(p for p in Path(__file__).parent.glob("bench_*.py"))
    failed = []
    for script in scripts:
        print(f"== {script.stem} ==", flush=True)
        if subprocess.call([sys.executable, str(script), "--out", str(args.out)]) != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
