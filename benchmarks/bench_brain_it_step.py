"""Brain-IT training-step cost against the number of functional clusters: dispatched ops and time per step.

A joint step pools every subject's voxels into cluster tokens, runs the interaction transformer once and
back-propagates. On a GPU a step of this many small tensors is bound by how many ops it launches, so the op
count of one forward + backward (counted with a dispatch mode) is the figure to hold flat in K; wall time per
AdamW step is measured beside it on the chosen device.

    python benchmarks/bench_brain_it_step.py --out benchmarks/results/brain-it-step-cpu.json
    python benchmarks/bench_brain_it_step.py --device cuda --batch 256 --out OUT/brain-it-step-cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from neuroattn.decode.brain_it import BrainIT, BrainITConfig
from neuroattn.io.atomic import atomic_write_text


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def _model(args: argparse.Namespace, n_clusters: int, device: str) -> BrainIT:
    gen = torch.Generator().manual_seed(0)
    config = BrainITConfig(n_clusters=n_clusters, embed_dim=32, dim=args.dim, heads=8, depth=args.depth,
                           n_tokens=65, clip_dim=64, latent_channels=0)
    subjects = {f"subj{i + 1:02d}": (torch.randn(args.voxels, 32, generator=gen),
                                     torch.randint(0, n_clusters, (args.voxels,), generator=gen))
                for i in range(args.subjects)}
    return BrainIT(config, subjects).to(device)


def _step(model: BrainIT, betas: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer | None) -> None:
    tokens = torch.cat([model.cluster_tokens(name, x) for name, x in betas.items()])
    out = model.decode_outputs(model.interact(tokens))
    out.tokens.float().square().mean().backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure(args: argparse.Namespace, n_clusters: int) -> dict[str, Any]:
    device = args.device
    model = _model(args, n_clusters, device)
    per_subject = max(1, args.batch // args.subjects)
    betas = {name: torch.randn(per_subject, args.voxels, device=device) for name in model.subjects}
    counter = OpCounter()
    with counter:
        _step(model, betas, None)
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    for _ in range(args.warmup):
        with amp:
            _step(model, betas, optimizer)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.repeats):
        with amp:
            _step(model, betas, optimizer)
    if device == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - start) / args.repeats * 1000
    return {"n_clusters": n_clusters, "ops_per_step": counter.count, "ms_per_step": round(ms, 1),
            "batch": per_subject * args.subjects}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--clusters", default="32,128", help="comma-separated cluster counts")
    p.add_argument("--subjects", type=int, default=7)
    p.add_argument("--voxels", type=int, default=6000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=63, help="trials per step, split evenly over the subjects")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rows = [measure(args, int(k)) for k in args.clusters.split(",")]
    print(f"{'clusters':>8} {'ops/step':>9} {'ms/step':>8}  ({args.subjects} subjects x {args.voxels} voxels, "
          f"dim {args.dim}, depth {args.depth}, {args.device})")
    for row in rows:
        print(f"{row['n_clusters']:>8} {row['ops_per_step']:>9} {row['ms_per_step']:>8}")
    result = {"benchmark": "brain-it-step", "device": torch.cuda.get_device_name() if args.device == "cuda"
              else platform.processor() or "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "settings": vars(args), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
