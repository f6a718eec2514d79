"""Brain3D conditioning: each head reads only its region groups' voxels, computed exactly as the decoder would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from neuroattn.brain3d.conditioning import ablate_betas, decode_conditioning, reference_foreground, region_groups
from neuroattn.cli import main
from neuroattn.decode.autoencoder import decode_latents
from neuroattn.decode.data_bundle import generator_autoencoder
from neuroattn.decode.runs import open_run
from neuroattn.errors import ConfigError, InvalidInputError

torch.set_num_threads(1)
PIPELINES = Path(__file__).resolve().parents[2] / "pipelines" / "decode"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("b3d_cond")
    import scipy.linalg  # noqa: F401  (its OpenBLAS must be loaded for the thread limit to reach it)

    with threadpool_limits(limits=1):
        assert main(["decode", "simulate", "--config", str(PIPELINES / "simulate-tiny.yaml"), "--out",
                     str(root / "data"), "--no-progress"]) == 0
        assert main(["decode", "train", "--data", str(root / "data"), "--model", "ridge", "--out",
                     str(root / "ridge"), "--no-progress"]) == 0
    bundle, subject, decoder = open_run(root / "ridge")
    betas, _ = bundle.subject(subject).trials(test=True)
    return bundle, subject, decoder, betas[0]


def test_region_groups_follow_the_roi_codes(run) -> None:
    bundle, subject, _, _ = run
    data = bundle.subject(subject)
    groups = region_groups(data)
    assert groups.names == ["V1", "V2", "V3", "V4", "higher"]
    for code, name in data.roi_names.items():
        np.testing.assert_array_equal(groups.masks[name], data.roi == code)
    assert groups.head_mask("lowlevel").sum() == np.isin(data.roi, [1, 2, 3, 4]).sum()
    assert not (groups.head_mask("lowlevel") & groups.head_mask("semantic")).any()
    with pytest.raises(InvalidInputError, match="MT"):
        region_groups(data, lowlevel=("V1", "MT"))
    with pytest.raises(ConfigError, match="both heads"):
        region_groups(data, lowlevel=("V1", "higher"), semantic=("higher",))


def test_each_head_reads_only_its_voxels(run) -> None:
    bundle, subject, decoder, betas = run
    data = bundle.subject(subject)
    cond = decode_conditioning(bundle, subject, decoder, betas)
    low = np.where(data.roi <= 4, betas, 0.0).astype(np.float32)[None]  # (1, V): only V1-V4
    high = np.where(data.roi == 5, betas, 0.0).astype(np.float32)[None]  # (1, V): only the higher areas
    np.testing.assert_array_equal(cond.clip_tokens, decoder.predict_clip(high)[0])
    np.testing.assert_array_equal(cond.pooled, cond.clip_tokens[0])
    vae = generator_autoencoder(bundle.root, bundle.source, bundle.stimuli.image_size)
    expected = decode_latents(vae, torch.as_tensor(decoder.predict_latents(low)))[0]  # (H, W, 3) uint8
    np.testing.assert_array_equal(np.round(cond.lowlevel_image * 255).astype(np.uint8).transpose(1, 2, 0), expected)
    assert cond.lowlevel_image.shape == (3, bundle.stimuli.image_size, bundle.stimuli.image_size)
    assert cond.lowlevel_image.min() >= 0.0 and cond.lowlevel_image.max() <= 1.0
    # the full pattern decodes differently: the masking is not a no-op
    assert not np.array_equal(decoder.predict_clip(betas[None])[0], cond.clip_tokens)
    info = cond.info
    assert info["lowlevel_voxels"] + info["semantic_voxels"] + info["unused_voxels"] == data.n_voxels
    assert info["clip_trained"] is False and info["autoencoder_trained"] is True
    assert set(cond.arrays()) >= {"clip_tokens", "pooled", "lowlevel_image"}


def test_ablate_betas_closed_form() -> None:
    betas = np.arange(6, dtype=np.float32)
    mask = np.array([0, 1, 0, 1, 0, 0], bool)
    np.testing.assert_array_equal(ablate_betas(betas, mask, "zero"), [0, 0, 2, 0, 4, 5])
    noise = np.random.default_rng(3).standard_normal(2).astype(np.float32)
    out = ablate_betas(betas, mask, "perturb", seed=3, sd=0.5)
    np.testing.assert_allclose(out[mask], betas[mask] + 0.5 * noise, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out[~mask], betas[~mask])
    with pytest.raises(ConfigError):
        ablate_betas(betas, mask, "shuffle")


def test_reference_foreground() -> None:
    image = np.full((3, 20, 20), 0.9, np.float32)
    image[:, 5:10, 6:12] = 0.1
    mask, how = reference_foreground(image)
    assert how == "background" and mask.sum() == 30 and mask[5:10, 6:12].all()
    flat = np.full((3, 20, 20), 0.5, np.float32)  # no object: a centred disc of radius 7 px
    disc, how = reference_foreground(flat)
    assert how == "centre-disc" and disc[10, 10] == 1 and disc[0, 0] == 0 and abs(disc.sum() - np.pi * 49) < 12


def test_bad_betas(run) -> None:
    bundle, subject, decoder, betas = run
    with pytest.raises(InvalidInputError, match="voxels"):
        decode_conditioning(bundle, subject, decoder, betas[:-1])
    with pytest.raises(ConfigError, match="ablate"):
        decode_conditioning(bundle, subject, decoder, betas, ablate="V9")
