"""The training loop every model uses: AMP, accumulation, clipping, checkpoints and resume, DDP, logging."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from neuroattn.errors import CheckpointError, ConfigError
from neuroattn.io.atomic import atomic_write_text
from neuroattn.progress import progress_bar
from neuroattn.train.config import TrainConfig
from neuroattn.train.data import DataPosition, batch_stream, move_to
from neuroattn.train.distributed import (
    DistContext,
    all_gather_bytes,
    all_reduce_gradients,
    barrier,
    broadcast_buffers,
    broadcast_modules,
    setup_distributed,
    teardown_distributed,
)
from neuroattn.train.export import FINAL_DIR, save_final_model
from neuroattn.train.metrics import MetricLogger
from neuroattn.train.precision import resolve_amp
from neuroattn.train.schedule import build_schedulers
from neuroattn.train.seed import capture_rng_state, restore_rng_state, rng_isolated, seed_everything
from neuroattn.train.state import latest_checkpoint, list_checkpoints, load_training_state, save_training_state
from neuroattn.train.task import TrainTask, check_modules, check_optimizers, optimizer_params

CHECKPOINTS_DIR = "checkpoints"
SUMMARY_NAME = "train_summary.json"


@dataclass
class TrainResult:
    """What one :meth:`Trainer.fit` call did."""

    out_dir: Path
    steps: int  # optimizer steps completed in the run so far
    finished: bool  # True when steps == max_steps and the final model was written
    resumed_from: int | None  # step of the checkpoint this call started from
    seconds: float  # wall time of the whole run (resumed parts included)
    last_metrics: dict[str, float] = field(default_factory=dict)  # the last logged row
    validation: dict[str, float] = field(default_factory=dict)  # the final task.validate result
    final_dir: Path | None = None  # out_dir/final when finished
    checkpoint_dir: Path | None = None  # the newest training-state checkpoint


class Trainer:
    """Runs a :class:`~neuroattn.train.task.TrainTask` under a :class:`TrainConfig`.

    Writes, in ``config.out_dir`` (rank 0 only): ``checkpoints/step_XXXXXXXX/`` training states and
    ``checkpoints/latest.json``, ``metrics.jsonl`` and ``metrics.csv``, ``final/`` (one
    ``neuroattn.io.checkpoints`` folder holding every module, see
    :func:`neuroattn.train.export.save_final_model`) and ``train_summary.json``. Under ``torchrun`` each
    rank reads its own shard of every batch and gradients are averaged over ranks before each update.
    """

    def __init__(self, task: TrainTask, config: TrainConfig) -> None:
        self.task = task
        self.config = config

    def fit(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.max_steps``.

        Parameters
        ----------
        resume
            Continue from the newest checkpoint in ``out_dir`` (start fresh when there is none). The
            continued run equals an uninterrupted one bit for bit on CPU with ``num_workers=0``.
        stop_after
            Stop once this many steps are complete, writing a checkpoint there (a planned pause; the
            schedule still follows ``max_steps``).
        """
        ctx = setup_distributed(self.config.device)
        try:
            return self._fit(ctx, resume, stop_after)
        finally:
            teardown_distributed(ctx)

    # -- setup -------------------------------------------------------------------------------------
    def _fit(self, ctx: DistContext, resume: bool, stop_after: int | None) -> TrainResult:
        cfg, task = self.config, self.task
        ckpt_root = Path(cfg.out_dir) / CHECKPOINTS_DIR
        source = latest_checkpoint(ckpt_root) if resume else None
        if not resume and list_checkpoints(ckpt_root):
            raise ConfigError(f"{cfg.out_dir} already holds a training run; resume it or pick another out_dir.")
        plan = resolve_amp(cfg.amp, ctx.device)
        seed_everything(cfg.seed)
        modules = check_modules(task.modules())
        for module in modules.values():
            module.to(ctx.device).train()
        broadcast_modules(modules.values(), ctx)
        seed_everything(cfg.seed + ctx.rank)  # ranks share initial weights but draw their own dropout
        optimizers = check_optimizers(task.configure_optimizers(modules))
        self.modules, self.optimizers, self.ctx, self.plan = modules, optimizers, ctx, plan
        self.params = {name: optimizer_params(opt) for name, opt in optimizers.items()}
        self.schedulers = build_schedulers(
            optimizers,
            {name: cfg.lr_for(name) for name in optimizers},
            warmup_steps=cfg.warmup_steps,
            max_steps=cfg.max_steps,
            min_lr_ratio=cfg.min_lr_ratio,
        )
        self.scalers = {name: plan.grad_scaler() for name in optimizers}
        dataset = task.train_dataset()
        step, position, seconds_before = 0, DataPosition(), 0.0
        if source is not None:
            step, state = load_training_state(source)
            position, seconds_before = self._restore(state, source)
        self.logger = MetricLogger(cfg.out_dir, enabled=ctx.is_main, tensorboard=cfg.tensorboard)
        self.logger.start(step)
        stream = batch_stream(
            dataset,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            start=position,
            rank=ctx.rank,
            world_size=ctx.world_size,
            drop_last=cfg.drop_last,
            num_workers=cfg.num_workers,
            collate_fn=getattr(task, "collate_fn", None),
            pin_memory=ctx.device.type == "cuda",
        )
        target = cfg.max_steps if stop_after is None else min(stop_after, cfg.max_steps)
        bar = progress_bar(total=cfg.max_steps, initial=step, disable=not (cfg.progress and ctx.is_main), unit="step")
        result = TrainResult(Path(cfg.out_dir), step, False, step if source is not None else None, 0.0)
        result.checkpoint_dir = source
        self._clock = (seconds_before, time.perf_counter())
        try:
            self._loop(stream, step, target, position, bar, result)
            result.seconds = self._seconds()
            if result.steps >= cfg.max_steps:
                result.finished = True
                result.validation = self._validate(result.steps)
                if ctx.is_main:
                    result.final_dir = self._save_final(len(dataset), result.steps)  # type: ignore[arg-type]
            if ctx.is_main:
                self.logger.write_csv()
                self._write_summary(result)
            barrier(ctx)
        finally:
            stream.close()
            bar.close()
            self.logger.close()
        return result

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(
        self,
        stream: Iterator[tuple[DataPosition, Any]],
        step: int,
        target: int,
        position: DataPosition,
        bar: Any,
        result: TrainResult,
    ) -> None:
        cfg = self.config
        while step < target:
            broadcast_buffers(self.modules.values(), self.ctx)
            lrs = {f"lr/{name}": s.get_last_lr()[0] for name, s in self.schedulers.items()}
            sums, position = self._train_step(stream, step, position)
            step += 1
            with warnings.catch_warnings():  # fp16 may skip a step on overflow; the schedule still advances
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                for scheduler in self.schedulers.values():
                    scheduler.step()
            bar.update(1)
            result.steps = step
            if step % cfg.log_every == 0 or step == target:
                row = {"step": step, "epoch": position.epoch, "seconds": round(self._seconds(), 3)}
                row |= {k: float(v) / n for k, (v, n) in sums.items()} | lrs
                self.logger.log(row)
                result.last_metrics = {k: v for k, v in row.items() if k != "step"}
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.startswith("loss/")})
            if cfg.validate_every and step % cfg.validate_every == 0 and step < cfg.max_steps:
                self._validate(step)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == target:
                result.checkpoint_dir = self._checkpoint(step, position)

    def _seconds(self) -> float:
        """Wall time of the run so far, including the parts before a resume."""
        before, start = self._clock
        return before + time.perf_counter() - start

    def _train_step(
        self, stream: Iterator[tuple[DataPosition, Any]], step: int, position: DataPosition
    ) -> tuple[dict[str, tuple[Tensor | float, int]], DataPosition]:
        """One optimizer step per optimizer over ``grad_accum_steps`` micro-batches; returns metric sums."""
        accum = self.config.grad_accum_steps
        sums: dict[str, tuple[Tensor | float, int]] = {}
        pending: dict[str, None] = {}  # optimizers holding gradients of this step, in first-yield order
        for micro in range(accum):
            position, batch = next(stream)
            batch = move_to(batch, self.ctx.device)
            with self.plan.autocast():  # a task may return a ready iterator instead of a generator
                losses = iter(self.task.losses(batch, step))
            seen: set[str] = set()
            while True:
                with self.plan.autocast():  # the generator's code runs inside next(), so under autocast
                    try:
                        name, loss, metrics = next(losses)
                    except StopIteration:
                        break
                self._check_loss(name, loss, seen)
                self.scalers[name].scale(loss / accum).backward(inputs=self.params[name])
                _accumulate(sums, {f"loss/{name}": loss, **metrics})
                pending[name] = None
                if micro == accum - 1:
                    self._optimizer_step(name, sums)
                    del pending[name]
        for name in pending:  # yielded on earlier micro-batches only: update after the last one
            self._optimizer_step(name, sums)
        return sums, position

    def _check_loss(self, name: str, loss: Tensor, seen: set[str]) -> None:
        if name not in self.optimizers:
            raise ConfigError(f"losses() yielded optimizer {name!r}; the optimizers are {list(self.optimizers)}")
        if name in seen:
            raise ConfigError(f"losses() yielded optimizer {name!r} twice for one batch; sum its losses first")
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise ConfigError(f"losses() must yield a scalar tensor for {name!r}, got {type(loss).__name__}")
        seen.add(name)

    def _optimizer_step(self, name: str, sums: dict[str, tuple[Tensor | float, int]]) -> None:
        """Average over ranks, unscale, clip (recording the pre-clip norm), step and zero one optimizer."""
        optimizer, scaler, params = self.optimizers[name], self.scalers[name], self.params[name]
        all_reduce_gradients(params, self.ctx)
        scaler.unscale_(optimizer)
        if self.config.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm)
            _accumulate(sums, {f"grad_norm/{name}": norm})
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    # -- validation, checkpoints and outputs -------------------------------------------------------
    def _validate(self, step: int) -> dict[str, float]:
        validate = getattr(self.task, "validate", None)
        if validate is None or not self.ctx.is_main:
            return {}
        for module in self.modules.values():
            module.eval()
        try:
            with rng_isolated(), torch.no_grad():
                values = {k: float(v) for k, v in validate(self.modules, step).items()}
        finally:
            for module in self.modules.values():
                module.train()
        self.logger.log({"step": step} | {f"val/{k}": v for k, v in values.items()})
        return values

    def _setup(self) -> dict[str, Any]:
        """What must not change across a resume for the data position and random streams to stay valid."""
        cfg = self.config
        return {
            "world_size": self.ctx.world_size,
            "batch_size": cfg.batch_size,
            "grad_accum_steps": cfg.grad_accum_steps,
            "seed": cfg.seed,
            "drop_last": cfg.drop_last,
        }

    def _training_state(self, position: DataPosition, rng: list[Any]) -> dict[str, Any]:
        return {
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "scalers": {n: s.state_dict() for n, s in self.scalers.items()},
            "rng": rng,
            "data": {"epoch": position.epoch, "batch": position.batch},
            "seconds": self._seconds(),
            "setup": self._setup(),
            "config": self.config.to_dict(),
        }

    def _checkpoint(self, step: int, position: DataPosition) -> Path | None:
        payload = json.dumps(capture_rng_state()).encode()
        rng = [json.loads(item) for item in all_gather_bytes(payload, self.ctx)]  # every rank's streams
        path = None
        if self.ctx.is_main:
            state = self._training_state(position, rng)
            root = Path(self.config.out_dir) / CHECKPOINTS_DIR
            path = save_training_state(root, step, state, keep_last=self.config.keep_last)
            self.logger.write_csv()
        barrier(self.ctx)
        return path

    def _restore(self, state: dict[str, Any], source: Path) -> tuple[DataPosition, float]:
        saved = state.get("setup", {})
        changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in self._setup().items() if saved.get(k) != v]
        if changed:
            raise CheckpointError(f"{source}: cannot resume with a different setup ({'; '.join(changed)})")
        for kind, live in (("modules", self.modules), ("optimizers", self.optimizers)):
            if set(state[kind]) != set(live):
                raise CheckpointError(f"{source}: saved {kind} {sorted(state[kind])}, task has {sorted(live)}")
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
            self.schedulers[name].load_state_dict(state["schedulers"][name])
            saved_scaler = state["scalers"].get(name) or {}
            if saved_scaler and self.scalers[name].is_enabled():
                self.scalers[name].load_state_dict(saved_scaler)
        restore_rng_state(state["rng"][self.ctx.rank])  # last: nothing may draw after it
        return DataPosition(**state["data"]), float(state["seconds"])

    def _save_final(self, num_samples: int, steps: int) -> Path:
        cfg = self.config
        summary = {
            "num_samples": num_samples,
            "steps": steps,
            "samples_per_step": cfg.batch_size * cfg.grad_accum_steps * self.ctx.world_size,
            "seed": cfg.seed,
        }
        return save_final_model(self.task, self.modules, Path(cfg.out_dir) / FINAL_DIR, summary)

    def _write_summary(self, result: TrainResult) -> None:
        summary = {
            "steps": result.steps,
            "max_steps": self.config.max_steps,
            "finished": result.finished,
            "resumed_from": result.resumed_from,
            "seconds": round(result.seconds, 3),
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
            "amp": self.plan.name,
            "last_metrics": result.last_metrics,
            "validation": result.validation,
            "final_dir": None if result.final_dir is None else str(result.final_dir),
            "checkpoint_dir": None if result.checkpoint_dir is None else str(result.checkpoint_dir),
            "config": self.config.to_dict(),
        }
        atomic_write_text(Path(self.config.out_dir) / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")


def _accumulate(sums: dict[str, tuple[Tensor | float, int]], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Tensor):
            value = value.detach()
            value = value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
        else:
            value = float(value)
        total, count = sums.get(key, (0.0, 0))
        sums[key] = (total + value, count + 1)
