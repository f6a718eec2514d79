"""Training SA-CycleGAN-2.5D on unpaired 2.5D stacks of two sites: data, SSIM, losses and the trainer task."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.harmonize.sa_cyclegan import SIZE_MULTIPLE, SACycleGAN
from neuroattn.harmonize.slices import PLANES, gather_stacks, plane_view, resolve_planes
from neuroattn.train import LossItem, adam_per_module

# -- data -------------------------------------------------------------------------------------------------


def slice_shape(shape: Sequence[int], plane: str) -> tuple[int, int]:
    """``(H, W)`` of the slices of a ``(X, Y, Z)`` grid along ``plane``."""
    x, y, z = (int(s) for s in shape[-3:])
    return {"axial": (x, y), "coronal": (x, z), "sagittal": (y, z)}[plane]


def common_canvas(shapes: Sequence[Sequence[int]], planes: Sequence[str]) -> tuple[int, int]:
    """The smallest ``(H, W)``, multiples of 4, that holds every slice of every grid along every plane."""
    sizes = [slice_shape(s, p) for s in shapes for p in planes]
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    return h + (-h % SIZE_MULTIPLE), w + (-w % SIZE_MULTIPLE)


class SliceBank(Dataset):
    """The scaled volumes of one site and the 2.5D windows around their brain slices.

    Item ``i`` is ``(window, mask)``: ``window`` ``(window_slices * C, H, W)`` holds ``window_slices``
    consecutive slices (slice-major channels, indices clamped at the volume's ends) centred on a slice whose
    brain area is at least ``min_brain_fraction`` of that volume's largest along the plane; ``mask``
    ``(1, H, W)`` is the centre slice's brain mask. Slices are padded at the bottom/right to ``canvas``:
    images by edge replication (background continues), masks with zeros.

    Parameters
    ----------
    volumes : scaled ``(C, X, Y, Z)`` arrays (all with the same C).
    masks : ``(X, Y, Z)`` brain masks.
    planes : slicing planes to draw from.
    window_slices : slices per item; ``2k - 1`` lets the cycle pass translate the k neighbours of a k-stack.
    canvas : padded ``(H, W)``; default :func:`common_canvas` of these volumes.
    crop_size : when set, each item is a random ``crop_size x crop_size`` patch of the padded slice (offsets
        drawn from the global torch stream), which makes a training step cheaper; None keeps whole slices.
    """

    def __init__(
        self,
        volumes: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        *,
        planes: Sequence[str] = ("axial",),
        window_slices: int = 5,
        canvas: tuple[int, int] | None = None,
        min_brain_fraction: float = 0.1,
        crop_size: int | None = None,
    ) -> None:
        if not volumes or len(volumes) != len(masks):
            raise InvalidInputError(f"need one mask per volume and at least one volume ({len(volumes)} volumes, "
                                    f"{len(masks)} masks)", None)
        self.planes = tuple(resolve_planes(list(planes)))
        self.window_slices = window_slices
        # Saturate at the scaling's range, as the generator's tanh does, so real and fake slices share it.
        self.volumes = [torch.from_numpy(np.clip(v, -1.0, 1.0).astype(np.float32)) for v in volumes]
        self.masks = [torch.from_numpy(np.ascontiguousarray(np.asarray(m) > 0.5, dtype=np.float32)) for m in masks]
        channels = {v.shape[0] for v in self.volumes}
        if len(channels) != 1:
            raise InvalidInputError(f"volumes have different channel counts {sorted(channels)}", None)
        self.channels = channels.pop()
        self.canvas = canvas or common_canvas([v.shape for v in self.volumes], self.planes)
        if crop_size is not None and not 0 < crop_size <= min(self.canvas):
            raise ConfigError(f"'crop_size' must be in [1, {min(self.canvas)}] for slices padded to {self.canvas}. "
                              f"{crop_size!r} was provided.")
        self.crop_size = crop_size
        self.index: list[tuple[int, int, int]] = []  # (volume, plane, slice)
        for vi, mask in enumerate(self.masks):
            for pi, plane in enumerate(self.planes):
                h, w = slice_shape(mask.shape, plane)
                if h > self.canvas[0] or w > self.canvas[1]:
                    raise InvalidInputError(f"{plane} slices of {tuple(mask.shape)} exceed the canvas {self.canvas}")
                area = plane_view(mask[None], plane).sum(dim=(0, 1, 2))  # (D,)
                keep = torch.nonzero(area >= max(min_brain_fraction * float(area.max()), 1.0)).flatten()
                self.index += [(vi, pi, int(z)) for z in keep]
        if not self.index:
            raise InvalidInputError("no slice holds any brain voxel; check the masks", None)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        vi, pi, z = self.index[i]
        plane = self.planes[pi]
        view = plane_view(self.volumes[vi], plane)  # (C, H, W, D)
        window = gather_stacks(view, torch.tensor([z]), self.window_slices)[0]  # (window*C, h, w)
        mask = plane_view(self.masks[vi][None], plane)[..., z]  # (1, h, w)
        pad = (0, self.canvas[1] - window.shape[-1], 0, self.canvas[0] - window.shape[-2])
        window, mask = F.pad(window[None], pad, mode="replicate")[0], F.pad(mask, pad)  # (·, *canvas)
        if self.crop_size is not None:
            top = int(torch.randint(self.canvas[0] - self.crop_size + 1, ()))
            left = int(torch.randint(self.canvas[1] - self.crop_size + 1, ()))
            crop = (slice(None), slice(top, top + self.crop_size), slice(left, left + self.crop_size))
            window, mask = window[crop], mask[crop]
        return window, mask


class UnpairedStacks(Dataset):
    """Unpaired (source, target) windows: item ``i`` pairs source window ``i mod n_a`` with a target window
    drawn uniformly from the global torch stream (exactly resumable with ``num_workers=0``)."""

    def __init__(self, source: SliceBank, target: SliceBank) -> None:
        same = ("canvas", "window_slices", "crop_size")
        if any(getattr(source, k) != getattr(target, k) for k in same):
            raise ConfigError("source and target slice banks need the same canvas, window and crop size")
        if source.channels != target.channels:
            raise InvalidInputError(f"source has {source.channels} modalities, target {target.channels}", None)
        self.source, self.target = source, target

    def __len__(self) -> int:
        return max(len(self.source), len(self.target))

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        a, a_mask = self.source[i % len(self.source)]
        b, b_mask = self.target[int(torch.randint(len(self.target), ()))]
        return {"a": a, "a_mask": a_mask, "b": b, "b_mask": b_mask}


# -- losses -----------------------------------------------------------------------------------------------


def gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Normalised 2-D Gaussian kernel ``(1, 1, size, size)``."""
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim_map(x: Tensor, y: Tensor, *, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> Tensor:
    """Per-pixel SSIM (Wang et al. 2004, Gaussian window, K1 = 0.01, K2 = 0.03) of ``(B, C, H, W)`` images.

    Local statistics use reflection padding so the map keeps the input's size; the window shrinks to the
    largest odd size that fits images smaller than ``window_size``. Differentiable in both inputs.
    """
    channels, h, w = x.shape[1:]
    size = min(window_size, h - (h % 2 == 0), w - (w % 2 == 0))
    kernel = gaussian_window(size, sigma, x.device, x.dtype).expand(channels, 1, size, size)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t, [size // 2] * 4, mode="reflect"), kernel, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))


def weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``values`` ``(B, C, H, W)`` under per-pixel ``weights`` ``(B, 1, H, W)``."""
    return (values * weights).sum() / (weights.sum() * values.shape[1]).clamp_min(1e-8)


def lsgan_loss(scores: list[Tensor], target: float) -> Tensor:
    """Least-squares GAN loss, averaged over discriminator scales: ``mean((D - target)^2)``."""
    return sum(torch.mean((s.float() - target) ** 2) for s in scores) / len(scores)  # type: ignore[return-value]


@dataclass
class CycleGANLossWeights:
    """Weights of the CycleGAN objective (published values) and of the brain mask in the image terms."""

    adversarial: float = 1.0  # LSGAN, each direction
    cycle: float = 10.0  # L1 between a centre slice and its A->B->A (B->A->B) reconstruction
    identity: float = 5.0  # L1 between a target stack's centre and G_AB of it (and the mirror)
    ssim: float = 1.0  # 1 - SSIM of the cycle reconstruction, images mapped from [-1, 1] to [0, 1]
    background_weight: float = 0.1  # weight of pixels outside the brain mask in L1/SSIM terms (inside: 1)
    ssim_window: int = 11  # pixels
    ssim_sigma: float = 1.5  # pixels

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class CycleOutputs:
    """Everything one forward pass of the two cycles produces (all ``(B, ·, H, W)``)."""

    real_a: Tensor  # centre slices (B, M, H, W)
    real_b: Tensor
    fake_b_stack: Tensor  # G_AB of the k windows around each A centre, stacked (B, k*M, H, W)
    fake_a_stack: Tensor
    fake_b: Tensor  # G_AB of the A centre stack (B, M, H, W)
    fake_a: Tensor
    rec_a: Tensor  # G_BA(fake_b_stack)
    rec_b: Tensor  # G_AB(fake_a_stack)
    idt_a: Tensor  # G_BA of the A centre stack
    idt_b: Tensor  # G_AB of the B centre stack


def sub_stacks(window: Tensor, k: int, m: int) -> Tensor:
    """The k consecutive k-slice stacks of a ``(B, (2k-1)*M, H, W)`` window, offset-major ``(k*B, k*M, H, W)``."""
    return torch.cat([window[:, j * m : (j + k) * m] for j in range(k)], dim=0)


def restack(slices: Tensor, k: int) -> Tensor:
    """``(k*B, M, H, W)`` translated slices (offset-major) → stacks ``(B, k*M, H, W)``, slice-major channels."""
    kb, m, h, w = slices.shape
    return slices.reshape(k, kb // k, m, h, w).transpose(0, 1).reshape(kb // k, k * m, h, w)


def cycle_pass(model: SACycleGAN, window_a: Tensor, window_b: Tensor) -> CycleOutputs:
    """Both cycles on real 2.5D stacks.

    To cycle centre slice ``z`` of A, G_AB translates the k stacks centred on ``z - k//2 ... z + k//2`` (taken
    from the ``2k - 1``-slice window), the k translated slices form a real B-style stack, and G_BA maps that
    stack back to ``z``; never the centre slice repeated. The identity stacks ride in the same batch.
    """
    cfg = model.config
    k, m = cfg.context_slices, cfg.modalities
    n = window_a.shape[0]
    if window_a.shape[1] != (2 * k - 1) * m or window_b.shape[1] != (2 * k - 1) * m:
        raise ValueError(f"windows must hold {2 * k - 1} slices x {m} modalities; got {tuple(window_a.shape)}")
    centre_a, centre_b = window_a[:, (k // 2) * m : (k // 2 + k) * m], window_b[:, (k // 2) * m : (k // 2 + k) * m]
    out_ab = model.g_ab(torch.cat([sub_stacks(window_a, k, m), centre_b]))  # ((k+1)B, M, H, W)
    out_ba = model.g_ba(torch.cat([sub_stacks(window_b, k, m), centre_a]))  # ((k+1)B, M, H, W)
    fake_b_slices, idt_b = out_ab[: k * n], out_ab[k * n :]
    fake_a_slices, idt_a = out_ba[: k * n], out_ba[k * n :]
    fake_b_stack, fake_a_stack = restack(fake_b_slices, k), restack(fake_a_slices, k)  # (B, kM, H, W)
    mid = slice((k // 2) * n, (k // 2 + 1) * n)
    return CycleOutputs(
        real_a=window_a[:, (k - 1) * m : k * m],
        real_b=window_b[:, (k - 1) * m : k * m],
        fake_b_stack=fake_b_stack,
        fake_a_stack=fake_a_stack,
        fake_b=fake_b_slices[mid],
        fake_a=fake_a_slices[mid],
        rec_a=model.g_ba(fake_b_stack),
        rec_b=model.g_ab(fake_a_stack),
        idt_a=idt_a,
        idt_b=idt_b,
    )


# -- the trainer task -------------------------------------------------------------------------------------


class CycleGANTask:
    """The :class:`~neuroattn.train.TrainTask` of SA-CycleGAN-2.5D: optimizers "G" (both generators) and
    "D" (both discriminators), Adam (0.5, 0.999); the trainer adds warm-up + cosine.

    G's loss: ``adv·LSGAN + cycle·L1(rec) + identity·L1(idt) + ssim·(1 − SSIM(rec))`` summed over both
    directions, L1 and SSIM averaged with weight 1 inside the centre slice's brain mask and
    ``background_weight`` outside. D's loss (after G's update, on the fakes of this batch):
    ``0.5·[(D(real) − 1)² + D(fake)²]`` per domain.

    ``model_class``, ``export_config`` and ``summary`` fill the final checkpoint the trainer writes
    (``export_config`` defaults to the model's architecture config).
    """

    def __init__(
        self,
        model: SACycleGAN,
        dataset: UnpairedStacks,
        weights: CycleGANLossWeights | None = None,
        *,
        model_class: str = "SACycleGAN",
        export_config: dict[str, Any] | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.dataset = model, dataset
        self.weights = weights or CycleGANLossWeights()
        self.model_class = model_class
        self.export_config = export_config
        self.summary = summary or {}
        if dataset.source.window_slices != 2 * model.config.context_slices - 1:
            raise ConfigError(
                f"the dataset windows hold {dataset.source.window_slices} slices; the cycle pass of "
                f"{model.config.context_slices}-slice stacks needs {2 * model.config.context_slices - 1}"
            )

    def modules(self) -> dict[str, nn.Module]:
        return {"G": self.model.generators, "D": self.model.discriminators}

    def configure_optimizers(self, modules: dict[str, nn.Module]) -> dict[str, torch.optim.Optimizer]:
        return adam_per_module(modules, betas=(0.5, 0.999))

    def train_dataset(self) -> Dataset:
        return self.dataset

    def _image_terms(self, fake: Tensor, real: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """Mask-weighted L1 and 1 − SSIM (on [0, 1] images) of ``fake`` against ``real``."""
        l1 = weighted_mean((fake.float() - real.float()).abs(), weight)
        ssim = ssim_map(
            (fake.float() + 1) / 2, (real.float() + 1) / 2, window_size=self.weights.ssim_window,
            sigma=self.weights.ssim_sigma,
        )
        return l1, 1 - weighted_mean(ssim, weight)

    def losses(self, batch: dict[str, Tensor], step: int) -> Iterator[LossItem]:
        w = self.weights
        weight_a = w.background_weight + (1 - w.background_weight) * batch["a_mask"]  # (B, 1, H, W)
        weight_b = w.background_weight + (1 - w.background_weight) * batch["b_mask"]
        out = cycle_pass(self.model, batch["a"], batch["b"])
        d_a, d_b = self.model.discriminators["a"], self.model.discriminators["b"]
        adv = lsgan_loss(d_b(out.fake_b), 1.0) + lsgan_loss(d_a(out.fake_a), 1.0)
        cyc_a, ssim_a = self._image_terms(out.rec_a, out.real_a, weight_a)
        cyc_b, ssim_b = self._image_terms(out.rec_b, out.real_b, weight_b)
        idt = weighted_mean((out.idt_a.float() - out.real_a).abs(), weight_a) + weighted_mean(
            (out.idt_b.float() - out.real_b).abs(), weight_b
        )
        cycle, ssim = cyc_a + cyc_b, ssim_a + ssim_b
        g_loss = w.adversarial * adv + w.cycle * cycle + w.identity * idt + w.ssim * ssim
        yield "G", g_loss, {"G/adv": adv.detach(), "G/cycle": cycle.detach(), "G/identity": idt.detach(),
                            "G/1-ssim": ssim.detach()}
        d_loss = 0.5 * (
            lsgan_loss(d_a(out.real_a), 1.0) + lsgan_loss(d_a(out.fake_a.detach()), 0.0)
            + lsgan_loss(d_b(out.real_b), 1.0) + lsgan_loss(d_b(out.fake_b.detach()), 0.0)
        )
        yield "D", d_loss, {}

    def model_config(self) -> dict[str, Any]:
        if self.export_config is not None:
            return self.export_config
        return {"model": self.model.config.to_dict(), "losses": self.weights.to_dict()}

    def export_state_dict(self, modules: dict[str, nn.Module]) -> dict[str, Tensor]:
        return dict(self.model.state_dict())

    def data_summary(self) -> dict[str, Any]:
        return dict(self.summary)


__all__ = [
    "PLANES",
    "CycleGANLossWeights",
    "CycleGANTask",
    "CycleOutputs",
    "SliceBank",
    "UnpairedStacks",
    "common_canvas",
    "cycle_pass",
    "gaussian_window",
    "lsgan_loss",
    "restack",
    "slice_shape",
    "ssim_map",
    "sub_stacks",
    "weighted_mean",
]
