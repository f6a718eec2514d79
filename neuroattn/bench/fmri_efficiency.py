"""fMRI efficiency benchmark: peak memory and time per training step of TABLeT, SLIM-Brain and a 4-D window baseline."""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from neuroattn.attention.errors import AttentionMemoryError
from neuroattn.bench.measure import deadline, sync
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.fmri.hiera4d import Hiera4D, Hiera4DConfig
from neuroattn.fmri.slim_brain import split_units
from neuroattn.fmri.swift import SwiFT, SwiFTConfig, stage1_tokens
from neuroattn.fmri.tablet import Tablet, TabletConfig
from neuroattn.fmri.tablet_tokens import TabletTokenizerConfig
from neuroattn.io.atomic import atomic_write_text

MODELS = {
    "swift": "SwiFT-like 4-D window baseline (voxels)",
    "slim_brain": "SLIM-Brain 4-D Hiera, every mask unit",
    "slim_brain_drop": "SLIM-Brain 4-D Hiera, mask-unit dropping",
    "tablet": "TABLeT transformer on precomputed frame tokens",
}
BASELINE = "swift"
MEMORY_TARGET = 0.40  # the issue: TABLeT and SLIM-Brain at <= 40 % of the baseline's peak memory
CAPACITY_TARGET = 10.0  # the issue: TABLeT handles >= 10x the baseline's T in the same memory
STEP_DESCRIPTION = (
    "one AdamW step of the encoder on `batch` windows: forward_features, loss = mean(embedding**2), backward, "
    "optimizer step; SLIM-Brain with dropping encodes only the kept mask units (keep drawn once per case); TABLeT "
    "runs on random tokens of its tokenizer's shape (the frozen tokenizer is a cached preprocessing step)"
)
MEMORY_METHODS = {
    "cuda-allocator": "torch.cuda.max_memory_allocated over one full training step, minus what was allocated "
    "before the model was built (parameters, gradients, AdamW moments, inputs, activations, workspaces)",
    "cpu-accounting": "bytes of the distinct tensors autograd keeps for backward (saved-tensor hook) + inputs + "
    "parameters + one gradient and two AdamW moments per trainable parameter; transient buffers and allocator "
    "caching are not counted (the process RSS is too noisy to attribute)",
}


@dataclass(frozen=True)
class EfficiencyPreset:
    """Input sizes and model configurations compared at equal input (same frames, same volume)."""

    name: str
    volume: int  # voxels per side of every frame (X = Y = Z), the same for every model
    frames: tuple[int, ...]  # frames per training window T, swept
    reference_frames: int  # the baseline's T for the memory targets and the memory budget of the T search
    max_frames: int  # the T search stops here (the cap)
    batch: int = 1  # windows per training step
    mask_ratio: float = 0.7  # share of SLIM-Brain mask units dropped (I-JEPA-style default of SlimBrainConfig)
    swift: dict[str, Any] = field(default_factory=dict)  # SwiFTConfig fields (img_size and frames set per case)
    hiera: dict[str, Any] = field(default_factory=dict)  # Hiera4DConfig fields of SLIM-Brain's encoder
    tablet: dict[str, Any] = field(default_factory=dict)  # TabletConfig fields (window set per case)
    tokenizer: dict[str, Any] = field(default_factory=dict)  # TabletTokenizerConfig fields (cube_size = volume)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cpu_preset() -> EfficiencyPreset:
    """48³ frames, T in (8, 16, 32): published SwiFT and Hiera depths/widths/windows, a narrower TABLeT."""
    return EfficiencyPreset(
        name="cpu", volume=48, frames=(8, 16, 32), reference_frames=16, max_frames=256,
        hiera={"patch": (1, 6, 6, 6)},  # 8³ tokens per frame, as SwiFT's published 6³ patches give at 48³
        tablet={"d_model": 224, "depth": 12, "heads": 7, "kv_heads": 1, "mlp_dim": 1216},  # published / 4 wide
        tokenizer={"compression": 16},  # 3³ = 27 tokens per frame, the published cell grid
        note="SwiFT at its published architecture (patch 6); SLIM-Brain's published Hiera with patch (1, 6, 6, 6); "
        "TABLeT at depth 12 but width 224 (published 896) so a CPU step takes about a second; run --published "
        "on a GPU for the published sizes",
    )  # fmt: skip


def published_preset() -> EfficiencyPreset:
    """The published sizes: 96³ frames, SwiFT T = 20, SLIM-Brain windows of 40, TABLeT T = 256 (for a GPU)."""
    return EfficiencyPreset(
        name="published", volume=96, frames=(20, 40, 80, 160, 256), reference_frames=20, max_frames=320,
        note="every model at its published configuration; SLIM-Brain needs T divisible by 8 (skipped at 20)",
    )  # fmt: skip


def tiny_preset() -> EfficiencyPreset:
    """Test size: 16³ frames, T in (4, 8), models of a few thousand parameters (seconds on a CPU)."""
    return EfficiencyPreset(
        name="tiny", volume=16, frames=(4, 8), reference_frames=4, max_frames=64,
        swift={"patch_size": 2, "embed_dim": 8, "depths": (1, 1), "heads": (1, 2), "drop_path": 0.0,
               "projection_dim": 8},
        hiera={"patch": (1, 2, 2, 2), "embed_dim": 16, "heads": 1, "stages": (1, 1), "mask_unit": (4, 4, 4, 4),
               "unit_attention_stages": 1, "mlp_ratio": 2.0},
        tablet={"d_model": 32, "depth": 2, "heads": 4, "kv_heads": 2, "mlp_dim": 64},
        tokenizer={"compression": 8, "latent_channels": 4, "width": 4},
    )  # fmt: skip


PRESETS: dict[str, Callable[[], EfficiencyPreset]] = {
    "cpu": cpu_preset,
    "published": published_preset,
    "tiny": tiny_preset,
}


def get_preset(name: str | EfficiencyPreset) -> EfficiencyPreset:
    """The preset called ``name`` in :data:`PRESETS` (a preset object passes through)."""
    if isinstance(name, EfficiencyPreset):
        return name
    if name not in PRESETS:
        raise ConfigError(f"'preset' must be one of {list(PRESETS)}. {name!r} was provided.")
    return PRESETS[name]()


# ----------------------------------------------------------------------------- one training step


@dataclass
class StepCost:
    """Memory (bytes) and time of one training step."""

    peak_bytes: int  # see MEMORY_METHODS[method]
    activation_bytes: int  # distinct tensors kept for backward, inputs and parameters excluded
    state_bytes: int  # parameters + gradients + AdamW moments
    input_bytes: int
    step_ms: float | None  # median of the timed steps; None when only memory was measured
    method: str  # "cuda-allocator" | "cpu-accounting"


def _storage_bytes(tensors: Sequence[Tensor]) -> dict[int, int]:
    """Bytes of each distinct storage, keyed by its address."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def training_state_bytes(optimizer: torch.optim.Optimizer, moments: int = 2) -> int:
    """Parameters plus, per trainable parameter, one gradient and ``moments`` optimizer moments (Adam: 2)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return sum(p.numel() * p.element_size() * (2 + moments if p.requires_grad else 1) for p in params)


def step_memory_and_time(
    model_step_fn: Callable[[], Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    inputs: Sequence[Tensor] = (),
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int = 3,
    memory_only: bool = False,
    base_bytes: int = 0,
) -> StepCost:
    """Peak memory and median time of a training step; the one measurement every model of the benchmark goes through.

    Parameters
    ----------
    model_step_fn : forward pass of one batch returning the scalar loss; this function runs ``backward``,
        ``optimizer.step`` and ``zero_grad(set_to_none=True)`` around it.
    optimizer : holds every trained parameter (its moments are counted as two per parameter, AdamW).
    inputs : the batch tensors, counted once on CPU even when autograd saves them.
    device : on CUDA the peak is the allocator's high-water mark over one full step minus ``base_bytes``
        (pass what was allocated before the model was built); on CPU it is the saved-tensor accounting of
        :data:`MEMORY_METHODS`.
    warmup, repeats : full steps before measuring, and timed steps (median).
    memory_only : no warm-up and no timing; on CPU only the forward pass runs (the accounting needs no
        backward), on CUDA one full step.

    Returns
    -------
    :class:`StepCost`.
    """
    device = torch.device(device)

    def step() -> None:
        model_step_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if not memory_only:
        for _ in range(warmup):
            step()
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model_step_fn()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    owned = _storage_bytes(params) | _storage_bytes(inputs)
    activation = sum(n for ptr, n in saved.items() if ptr not in owned)
    input_bytes = sum(_storage_bytes(inputs).values())
    if memory_only:
        del loss
    else:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
    state = training_state_bytes(optimizer)
    peak, method = activation + state + input_bytes, "cpu-accounting"
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        peak, method = torch.cuda.max_memory_allocated(device) - base_bytes, "cuda-allocator"
    times = []
    for _ in range(0 if memory_only else repeats):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    step_ms = 1000.0 * statistics.median(times) if times else None
    return StepCost(peak, activation, state, input_bytes, step_ms, method)


# ----------------------------------------------------------------------------- the models' steps


@dataclass
class StepCase:
    """One model on one input size, ready to train."""

    module: nn.Module
    loss_fn: Callable[[], Tensor]
    inputs: tuple[Tensor, ...]
    tokens: int  # tokens per window the encoder's first stage processes
    info: dict[str, Any]


def frame_step(name: str, preset: EfficiencyPreset) -> int:
    """The T granularity a model accepts: SwiFT's temporal window, SLIM-Brain's frames per mask unit, 1 for TABLeT."""
    if name == BASELINE:
        return int(preset.swift.get("window", SwiFTConfig.window)[3])
    if name.startswith("slim_brain"):
        cfg = Hiera4DConfig(**preset.hiera)
        return cfg.patch[0] * cfg.mask_unit[0]
    return 1


def build_case(
    name: str, preset: EfficiencyPreset, frames: int, device: str | torch.device = "cpu", *, seed: int = 0,
    amp: bool = False,
) -> StepCase:  # fmt: skip
    """Model ``name`` with random weights on ``batch`` random windows of ``frames`` frames of ``volume³`` voxels.

    Raises ConfigError / InvalidInputError when the model cannot take that input (the row is then skipped).
    """
    if name not in MODELS:
        raise ConfigError(f"'model' must be one of {list(MODELS)}. {name!r} was provided.")
    device = torch.device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    b, v = preset.batch, preset.volume
    info: dict[str, Any] = {}
    if name == BASELINE:
        swift_cfg = SwiFTConfig(**(preset.swift | {"img_size": (v, v, v), "frames": frames}))
        model: nn.Module = SwiFT(swift_cfg).to(device)
        x = torch.randn(b, frames, v, v, v, generator=gen).to(device)  # (B, T, X, Y, Z)
        forward = lambda: model.forward_features(x)  # noqa: E731
        tokens = stage1_tokens(swift_cfg)
        info["tokens_per_frame"] = tokens // frames
    elif name.startswith("slim_brain"):
        cfg = Hiera4DConfig(**preset.hiera)
        Hiera4D.check_window(cfg, (frames, v, v, v))
        model = Hiera4D(cfg).to(device)
        x = torch.randn(b, frames, v, v, v, generator=gen).to(device)  # (B, T, X, Y, Z)
        units = math.prod(model.unit_grid((frames, v, v, v)))
        keep = None
        if name == "slim_brain_drop":
            if units < 2:
                raise InvalidInputError(f"one mask unit per window ({frames} frames): nothing to drop", None)
            keep, _ = split_units(b, units, preset.mask_ratio, device)  # (B, K)
        kept = units if keep is None else int(keep.shape[1])
        forward = lambda: model(x, keep).units.mean(dim=1)  # noqa: E731  (B, D), forward_features of the kept units
        tokens = kept * math.prod(cfg.mask_unit)
        per_frame = math.prod(model.token_grid((frames, v, v, v))[1:])
        info |= {"units": units, "units_kept": kept, "tokens_per_frame": per_frame}
    else:
        tok_cfg = TabletTokenizerConfig(**(preset.tokenizer | {"cube_size": v}))
        tab_cfg = TabletConfig(**(preset.tablet | {"tokenizer": tok_cfg, "window": frames}))
        model = Tablet(tab_cfg).to(device)
        x = torch.randn(b, frames, tab_cfg.n_cells, tab_cfg.token_dim, generator=gen).to(device)  # (B, T, C, D)
        forward = lambda: model.forward_features(x)  # noqa: E731
        tokens = 1 + frames * tab_cfg.n_cells
        info |= {"tokens_per_frame": tab_cfg.n_cells, "token_dim": tab_cfg.token_dim}
    model.train()

    def loss_fn() -> Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            embedding = forward()  # (B, D)
        return embedding.float().pow(2).mean()

    return StepCase(model, loss_fn, (x,), tokens, info)


def _free(device: torch.device) -> int:
    """On CUDA: collect garbage and return what the allocator still holds; 0 on CPU, whose accounting counts only
    the case's own tensors (a full collection there costs more than a tiny case)."""
    if device.type != "cuda":
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(device)


def measure_cost(
    name: str, preset: EfficiencyPreset, frames: int, device: torch.device, *, repeats: int = 3, warmup: int = 1,
    memory_only: bool = False, amp: bool = False,
) -> tuple[StepCase, StepCost]:  # fmt: skip
    """Build the case and run :func:`step_memory_and_time` on it with AdamW."""
    base = _free(device)
    case = build_case(name, preset, frames, device, amp=amp)
    optimizer = torch.optim.AdamW(case.module.parameters(), lr=1e-4)
    cost = step_memory_and_time(
        case.loss_fn, optimizer, inputs=case.inputs, device=device, warmup=warmup, repeats=repeats,
        memory_only=memory_only, base_bytes=base,
    )  # fmt: skip
    return case, cost


FAILURES = (RuntimeError, MemoryError, ValueError, TimeoutError, ConfigError, InvalidInputError)


def _error_status(err: BaseException) -> str:
    """A row's status for a failed case: oom, oom-predicted (the attention planner refused), skipped or error."""
    if isinstance(err, AttentionMemoryError):
        return f"oom-predicted: {' '.join(str(err).split())[:200]}"
    if isinstance(err, torch.cuda.OutOfMemoryError | MemoryError):
        return "oom"
    if isinstance(err, ConfigError | InvalidInputError):
        return f"skipped: {' '.join(str(err).split())[:200]}"
    if isinstance(err, TimeoutError):
        return f"skipped: {err}"
    return f"error: {type(err).__name__}: {' '.join(str(err).split())[:200]}"


MB = 2**20


def measure_row(
    name: str, preset: EfficiencyPreset, frames: int, device: str | torch.device = "cpu", *, repeats: int = 3,
    amp: bool = False, timeout_s: float | None = 600.0,
) -> dict[str, Any]:  # fmt: skip
    """One table row: tokens, parameters, peak / activation / state MB and median step ms of a model at ``frames``."""
    device = torch.device(device)
    row: dict[str, Any] = {
        "model": name, "label": MODELS.get(name, name), "frames": frames, "volume": preset.volume,
        "batch": preset.batch, "tokens": None, "params_M": None, "peak_MB": None, "peak_bytes": None,
        "activation_MB": None, "state_MB": None, "input_MB": None, "step_ms": None, "vs_baseline": None,
        "activation_vs_baseline": None, "memory_method": None, "status": "ok",
    }  # fmt: skip
    try:
        with deadline(timeout_s):
            case, cost = measure_cost(name, preset, frames, device, repeats=repeats, amp=amp)
    except FAILURES as err:
        row["status"] = _error_status(err)
    if row["status"] != "ok":
        _free(device)  # after the except block, whose traceback kept the case's tensors alive
        return row
    row |= {
        "tokens": case.tokens,
        "params_M": round(sum(p.numel() for p in case.module.parameters()) / 1e6, 3),
        "peak_MB": round(cost.peak_bytes / MB, 2),
        "peak_bytes": cost.peak_bytes,
        "activation_MB": round(cost.activation_bytes / MB, 2),
        "state_MB": round(cost.state_bytes / MB, 2),
        "input_MB": round(cost.input_bytes / MB, 2),
        "step_ms": round(cost.step_ms, 2) if cost.step_ms is not None else None,
        "memory_method": cost.method,
        **case.info,
    }
    del case
    _free(device)
    return row


# ----------------------------------------------------------------------------- the longest window in a budget


def search_largest(
    fits: Callable[[int], bool], *, start: int, step: int, cap: int, resolution: int | None = None
) -> tuple[int, bool]:
    """Largest multiple of ``step`` in ``[step, cap]`` for which a monotone ``fits`` holds.

    Doubles from ``start`` (halving first when ``start`` does not fit) until ``fits`` fails or ``cap`` is reached,
    then bisects the bracket until it is at most ``resolution`` frames wide (default ``step``: exact).

    Returns
    -------
    ``(largest, capped)``: ``largest`` is 0 when not even ``step`` fits; ``capped`` is True when ``cap`` fits.
    """
    cap = cap // step * step
    res = max(step, resolution or step)
    lo = max(step, min(cap, start // step * step))
    if fits(lo):
        while True:
            nxt = min(cap, 2 * lo)
            if nxt == lo:
                return lo, True
            if not fits(nxt):
                hi = nxt
                break
            lo = nxt
    else:
        hi, lo = lo, lo // 2 // step * step
        while lo >= step and not fits(lo):
            hi, lo = lo, lo // 2 // step * step
        if lo < step:
            return 0, False
    while hi - lo > res:
        mid = (lo + hi) // 2 // step * step
        if mid <= lo:
            break
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, False


def frame_capacity(
    name: str, preset: EfficiencyPreset, budget_bytes: int, device: str | torch.device = "cpu", *,
    amp: bool = False, timeout_s: float | None = 600.0,
) -> dict[str, Any]:  # fmt: skip
    """Largest T whose training-step peak stays within ``budget_bytes`` (doubling search, capped at ``max_frames``)."""
    device = torch.device(device)
    step = frame_step(name, preset)
    probes: dict[int, Any] = {}

    def fits(frames: int) -> bool:
        try:
            with deadline(timeout_s):
                _, cost = measure_cost(name, preset, frames, device, memory_only=True, amp=amp)
            probes[frames] = cost.peak_bytes
        except FAILURES as err:
            probes[frames] = _error_status(err)
        _free(device)
        return isinstance(probes[frames], int) and probes[frames] <= budget_bytes

    resolution = max(step, preset.reference_frames // 4 // step * step)
    largest, capped = search_largest(
        fits, start=preset.reference_frames, step=step, cap=preset.max_frames, resolution=resolution
    )
    return {
        "model": name,
        "budget_MB": round(budget_bytes / MB, 2),
        "budget_bytes": budget_bytes,
        "largest_frames": largest,
        "x_reference": round(largest / preset.reference_frames, 2),
        "capped": capped,
        "resolution_frames": resolution,
        "probes_bytes": {str(t): probes[t] for t in sorted(probes)},  # peak bytes, or why the probe failed
    }


# ----------------------------------------------------------------------------- summary


def _fit(xs: Sequence[float], ys: Sequence[float], log: bool = False) -> float | None:
    """Least-squares slope of ``ys`` on ``xs`` (of logs with ``log``); None with fewer than two usable points."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None and (not log or (x > 0 and y > 0))]
    if len(pts) < 2:
        return None
    x, y = np.array(pts, dtype=np.float64).T
    if log:
        x, y = np.log(x), np.log(y)
    return float(np.polyfit(x, y, 1)[0])


def scaling(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per model: peak, activations and step time against T, peak MB per frame and log-log exponents."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r["model"] for r in rows):
        ok = sorted((r for r in rows if r["model"] == name and r["status"] == "ok"), key=lambda r: r["frames"])
        ts = [r["frames"] for r in ok]
        out[name] = {
            "frames": ts,
            "peak_MB": [r["peak_MB"] for r in ok],
            "activation_MB": [r["activation_MB"] for r in ok],
            "step_ms": [r["step_ms"] for r in ok],
            "peak_MB_per_frame": None if (s := _fit(ts, [r["peak_MB"] for r in ok])) is None else round(s, 3),
            "activation_exponent": None if (e := _fit(ts, [r["activation_MB"] for r in ok], True)) is None
            else round(e, 3),
            "time_exponent": None if (e := _fit(ts, [r["step_ms"] for r in ok], True)) is None else round(e, 3),
        }  # fmt: skip
    return out


def add_baseline_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each row's ``vs_baseline`` (its peak over the baseline's peak at the same T, the same input) and
    ``activation_vs_baseline`` (the same for activations alone, where the row has them)."""
    base = {r["frames"]: r for r in rows if r["model"] == BASELINE and r["status"] == "ok"}
    for r in rows:
        b = base.get(r["frames"])
        if r["status"] != "ok" or b is None:
            continue
        r["vs_baseline"] = round(r["peak_MB"] / b["peak_MB"], 4) if b["peak_MB"] else None
        if r.get("activation_MB") is not None and b.get("activation_MB"):
            r["activation_vs_baseline"] = round(r["activation_MB"] / b["activation_MB"], 4)


def evaluate_targets(rows: Sequence[dict[str, Any]], capacity: dict[str, Any], reference_frames: int) -> dict[str, Any]:
    """The issue's targets, met or missed with their values and, when missed, by how much.

    Memory targets compare peaks at the reference T (or the nearest T both measured); SLIM-Brain's target is
    its training regime (unit dropping), the variant without dropping is reported beside it.
    """
    ok = {(r["model"], r["frames"]): r for r in rows if r["status"] == "ok"}
    targets: dict[str, Any] = {}
    for name, role in (("tablet", "target"), ("slim_brain_drop", "target"), ("slim_brain", "info")):
        common = sorted(t for (m, t) in ok if m == name and (BASELINE, t) in ok)
        key = f"{name}_peak_vs_baseline"
        if not common:
            targets[key] = {"role": role, "met": None, "status": "not measured at any T the baseline has"}
            continue
        at = min(common, key=lambda t: (abs(t - reference_frames), t))
        ratio = ok[(name, at)]["peak_MB"] / ok[(BASELINE, at)]["peak_MB"]
        entry = {
            "role": role, "frames": at, "ratio": round(ratio, 4), "wanted": f"<= {MEMORY_TARGET:.2f}",
            "met": ratio <= MEMORY_TARGET, "ratio_by_frames": {str(t): ok[(name, t)]["vs_baseline"] for t in common},
        }  # fmt: skip
        if ratio > MEMORY_TARGET:
            entry["missed_by"] = (
                f"{100 * (ratio - MEMORY_TARGET):.1f} percentage points ({100 * ratio:.1f}% of the baseline); "
                f"needs {100 * (1 - MEMORY_TARGET / ratio):.1f}% less peak memory"
            )
        targets[key] = entry
    for name, role in (("tablet", "target"), ("slim_brain_drop", "info"), ("slim_brain", "info")):
        cap = capacity.get(name)
        key = f"{name}_frames_in_baseline_memory"
        if cap is None:
            targets[key] = {"role": role, "met": None, "status": "not searched"}
            continue
        x = cap["x_reference"]
        entry = {"role": role, "largest_frames": cap["largest_frames"], "x_reference": x, "capped": cap["capped"],
                 "wanted": f">= {CAPACITY_TARGET:.0f}x", "met": x >= CAPACITY_TARGET}  # fmt: skip
        if x < CAPACITY_TARGET:
            entry["missed_by"] = (
                f"reaching {x:.2f}x, not {CAPACITY_TARGET:.0f}x ({CAPACITY_TARGET * reference_frames:.0f} frames "
                f"wanted, {cap['largest_frames']} fit)"
            )
        targets[key] = entry
    return targets


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Fixed-width text table of the rows."""
    fmt = lambda v, spec: format(v, spec) if v is not None else format("-", ">" + spec.split(".")[0].rstrip("df"))  # noqa: E731
    lines = [
        f"{'model':<16}{'T':>5} {'tokens':>8} {'params M':>9} {'peak MB':>10} {'act MB':>10} {'state MB':>9} "
        f"{'step ms':>10} {'vs base':>8} {'act/base':>8}  status"
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<16}{r['frames']:>5} {fmt(r['tokens'], '8d')} {fmt(r['params_M'], '9.2f')} "
            f"{fmt(r['peak_MB'], '10.1f')} {fmt(r['activation_MB'], '10.1f')} {fmt(r['state_MB'], '9.1f')} "
            f"{fmt(r['step_ms'], '10.1f')} {fmt(r['vs_baseline'], '8.3f')} "
            f"{fmt(r.get('activation_vs_baseline'), '8.3f')}  {r['status'][:60]}"
            + (f" (units kept {r['units_kept']}/{r['units']})" if r["status"] == "ok" and "units" in r else "")
        )
    return "\n".join(lines)


def format_targets(targets: dict[str, Any], reference_frames: int) -> str:
    """One line per target: value, met / MISSED and the shortfall."""
    lines = []
    for key, t in targets.items():
        if t.get("met") is None:
            lines.append(f"[{t['role']}] {key}: {t.get('status', 'n/a')}")
            continue
        verdict = "met" if t["met"] else f"MISSED by {t['missed_by']}"
        if "ratio" in t:
            value = f"{100 * t['ratio']:.1f}% of the {BASELINE} peak at T={t['frames']} (wanted <= {MEMORY_TARGET:.0%})"
        else:
            more = "+" if t["capped"] else ""
            value = (f"T={t['largest_frames']}{more} = {t['x_reference']:.2f}x{more} the {BASELINE}'s "
                     f"T={reference_frames} in its memory (wanted {t['wanted']})")  # fmt: skip
        lines.append(f"[{t['role']}] {key}: {value} -- {verdict}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the tokenizer (optional)


def measure_tokenizer(preset: EfficiencyPreset, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Inference time per frame (and CUDA peak) of TABLeT's frozen tokenizer on a run of ``reference_frames``.

    Needs diffusers and MONAI; the autoencoder is randomly initialised at the preset's tokenizer config, so this is
    the cost of that architecture, not of a released checkpoint. Tokens are computed once per run and cached.
    """
    from neuroattn.fmri.tablet_tokens import TabletTokenizer

    device = torch.device(device)
    v, frames = preset.volume, preset.reference_frames
    try:
        tokenizer = TabletTokenizer(TabletTokenizerConfig(**(preset.tokenizer | {"cube_size": v})), device=device)
    except ImportError as err:
        return {"status": f"skipped: {err}"}
    run = np.random.default_rng(0).standard_normal((frames, v, v, v)).astype(np.float32)  # (T, X, Y, Z)
    tokenizer(run[:1])  # warm-up
    base = _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    tokens = tokenizer(run)  # (T, C, D)
    sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    params = sum(p.numel() for p in tokenizer.encoder.parameters()) if isinstance(tokenizer.encoder, nn.Module) else 0
    return {
        "status": "ok", "frames": frames, "tokens_shape": list(tokens.shape),
        "ms_per_frame": round(1000.0 * elapsed / frames, 2), "autoencoder_params_M": round(params / 1e6, 3),
        "peak_MB": None if peak is None else round(peak / MB, 2), "autoencoder": "random init",
    }  # fmt: skip


# ----------------------------------------------------------------------------- the whole benchmark


def run_fmri_efficiency(
    out_dir: str | Path,
    preset: str | EfficiencyPreset = "cpu",
    device: str = "cpu",
    *,
    models: Sequence[str] | None = None,
    frames: Sequence[int] | None = None,
    repeats: int = 3,
    amp: bool = False,
    capacity: bool = True,
    tokenizer: bool = False,
    case_timeout_s: float | None = 600.0,
    progress: bool = True,
    echo: bool = True,
) -> dict[str, Any]:
    """Measure every model at every T, search each model's longest window in the baseline's memory, check targets.

    Parameters
    ----------
    out_dir : folder receiving ``fmri-efficiency-<device type>.json`` (written atomically).
    preset : "cpu" (48³, T 8-32), "published" (96³, the published architectures; a GPU) or "tiny" (tests).
    device : where the models train.
    models : subset of :data:`MODELS` (the baseline is always measured).
    frames : T values instead of the preset's.
    repeats : timed steps per row (median), after one warm-up step and one accounting step.
    amp : bfloat16 autocast around the forward passes.
    capacity : run the largest-T search (budget: the baseline's peak at ``reference_frames``).
    tokenizer : also time TABLeT's frozen tokenizer (needs diffusers and MONAI).

    Returns
    -------
    The JSON document: ``rows``, ``scaling``, ``capacity``, ``targets``, ``tokenizer`` and run metadata.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    cfg = get_preset(preset)
    if frames:
        cfg = EfficiencyPreset(**(cfg.to_dict() | {"frames": tuple(int(t) for t in frames)}))
    dev = torch.device(device)
    chosen = list(dict.fromkeys([BASELINE, *(models or MODELS)]))
    unknown = [m for m in chosen if m not in MODELS]
    if unknown:
        raise ConfigError(f"'models' must be among {list(MODELS)}. {unknown} was provided.")
    ts = sorted(set(cfg.frames) | {cfg.reference_frames})
    cases = [(m, t) for m in chosen for t in ts]
    rows = [
        measure_row(m, cfg, t, dev, repeats=repeats, amp=amp, timeout_s=case_timeout_s)
        for m, t in tqdm(cases, desc="fMRI efficiency", disable=not progress)
    ]
    add_baseline_ratios(rows)
    caps: dict[str, Any] = {}
    reference = next((r for r in rows if r["model"] == BASELINE and r["frames"] == cfg.reference_frames), None)
    if capacity and reference is not None and reference["status"] == "ok":
        budget = reference["peak_bytes"]
        for m in tqdm([m for m in chosen if m != BASELINE], desc="T search", disable=not progress):
            caps[m] = frame_capacity(m, cfg, budget, dev, amp=amp, timeout_s=case_timeout_s)
    targets = evaluate_targets(rows, caps, cfg.reference_frames)
    doc = {
        "benchmark": "fmri-efficiency",
        "device": dev.type,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "amp": amp,
        "preset": cfg.to_dict(),
        "step": STEP_DESCRIPTION,
        "memory": MEMORY_METHODS["cuda-allocator" if dev.type == "cuda" else "cpu-accounting"],
        "repeats": repeats,
        "rows": rows,
        "scaling": scaling(rows),
        "capacity": caps,
        "targets": targets,
        "tokenizer": measure_tokenizer(cfg, dev) if tokenizer else None,
    }
    doc["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(out_dir) / f"fmri-efficiency-{dev.type}.json"
    atomic_write_text(out, json.dumps(doc, indent=2) + "\n")
    if echo:
        print(format_table(rows))
        print(format_targets(targets, cfg.reference_frames))
        print(f"wrote {out} ({doc['wall_s']:.0f} s)")
    return doc


__all__ = [
    "BASELINE",
    "MEMORY_METHODS",
    "MODELS",
    "PRESETS",
    "EfficiencyPreset",
    "StepCase",
    "StepCost",
    "add_baseline_ratios",
    "build_case",
    "cpu_preset",
    "evaluate_targets",
    "format_table",
    "format_targets",
    "frame_capacity",
    "frame_step",
    "get_preset",
    "measure_row",
    "measure_tokenizer",
    "published_preset",
    "run_fmri_efficiency",
    "scaling",
    "search_largest",
    "step_memory_and_time",
    "tiny_preset",
    "training_state_bytes",
]
