"""Evaluate a trained decoding run on its subject's test images: retrieval, identification and reconstructions.

Retrieval among training images is reported beside it, so the gap between fit and generalisation is visible.

Reconstruction scores come with two references computed on the same images: the mean training image
(a decoder that knows nothing of the trial) and the low-level path's own images before diffusion.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuroattn.decode.metrics import pixcorr, ssim

if TYPE_CHECKING:
    from neuroattn.decode.base import BrainDecoder
    from neuroattn.decode.clip_features import ImageFeatures


def mean_image_baseline(train_images: np.ndarray, seen: np.ndarray) -> dict[str, float]:
    """PixCorr and SSIM of the mean training image against every seen image (N, H, W, 3)."""
    mean = np.broadcast_to(train_images.astype(np.float64).mean(axis=0).round().astype(np.uint8), seen.shape)
    return {"pixcorr_mean_image_baseline": pixcorr(mean, seen), "ssim_mean_image_baseline": ssim(mean, seen)}


def train_retrieval(decoder: BrainDecoder, betas: np.ndarray, image_ids: np.ndarray, features: ImageFeatures, *,
                    pool_size: int = 300, seed: int = 0) -> dict[str, float]:
    """Top-1 among ``pool_size`` of the images a decoder was trained on, both ways (``*_train``).

    Beside the test numbers it shows how much of what the decoder fits on its training images carries over.
    """
    from neuroattn.decode.clip_features import retrieval_targets
    from neuroattn.decode.metrics import top1_among

    pick = np.sort(np.random.default_rng(seed).permutation(len(image_ids))[:pool_size])
    among = top1_among(decoder.brain_embeddings(betas[pick]), retrieval_targets(features.subset(image_ids[pick])),
                       pool_size=pool_size, seed=seed)  # fmt: skip
    return {"top1_brain_to_image_train": among["brain_to_image"], "top1_image_to_brain_train": among["image_to_brain"]}


def evaluate_run(checkpoint: str | Path, out: str | Path, *, data: str | Path | None = None,
                 subject: str | None = None, unclip: str | Path | None = None, reconstruct: bool = True,
                 recon_limit: int = 50, steps: int = 20, strength: float = 0.85, seed: int = 0,
                 progress: bool = False) -> dict[str, Any]:
    """Score the run's decoder on the subject's repeat-averaged test responses; writes metrics.json + report.html."""
    from neuroattn.decode.evaluate import evaluate_decoder
    from neuroattn.decode.pipeline import load_reconstructor, reconstruct_images
    from neuroattn.decode.reconstruct import save_pngs
    from neuroattn.decode.runs import open_run, trained_images

    bundle, subject, decoder = open_run(checkpoint, data, subject, progress=progress)
    subject_data = bundle.subject(subject)
    betas, ids = subject_data.averaged(test=True)
    extra = train_retrieval(decoder, *trained_images(checkpoint, subject_data), bundle.features, seed=seed)
    recon, recon_trained = None, None
    out = Path(out)
    if reconstruct:
        reconstructor = load_reconstructor(bundle.root, unclip)
        m = min(recon_limit, len(betas))
        recon, low = reconstruct_images(decoder, betas[:m], reconstructor, steps=steps, strength=strength,
                                        seed=seed, progress=progress)
        recon_trained = bool(reconstructor.trained)
        seen = bundle.stimuli.images[ids[:m]]
        _, train_ids = subject_data.trials(test=False)
        extra |= mean_image_baseline(bundle.stimuli.images[np.unique(train_ids)], seen)
        if low is not None:
            extra |= {"pixcorr_lowlevel_path": pixcorr(low, seen), "ssim_lowlevel_path": ssim(low, seen)}
            save_pngs(low, out / "lowlevel", [f"image{int(i)}" for i in ids[:m]])
        save_pngs(recon, out / "reconstructions", [f"image{int(i)}" for i in ids[:m]])
    result = evaluate_decoder(decoder, betas, ids, bundle.stimuli.images, bundle.features, recon,
                              noise_ceiling=bundle.noise_ceiling(subject), out_dir=out, extra_metrics=extra,
                              features_trained=bundle.clip_trained, reconstructions_trained=recon_trained,
                              seed=seed)
    return result | {"subject": subject, "checkpoint": str(checkpoint)}
