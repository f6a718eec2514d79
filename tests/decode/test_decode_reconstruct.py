"""Reconstruction from CLIP embeddings: a planted two-class set, img2img limits, determinism, checkpoints, unCLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuroattn.decode.autoencoder import decode_latents, encode_latents
from neuroattn.decode.autoencoder_training import train_autoencoder
from neuroattn.decode.reconstruct import Reconstructor, UnclipConditioner, img2img_timesteps, save_pngs
from neuroattn.decode.variation_model import VariationConfig, train_variation_model
from neuroattn.errors import InvalidInputError
from neuroattn.train import TrainConfig
from neuroattn.train.metrics import read_rows

SIZE, DIM = 16, 16  # image side (pixels) and CLIP embedding size of the planted set
COLOURS = np.array([[220, 30, 30], [30, 30, 220]], np.float64)  # class A red, class B blue


def train_config(out, steps: int) -> TrainConfig:
    return TrainConfig(out, max_steps=steps, batch_size=8, lr=1e-3, warmup_steps=10, checkpoint_every=0,
                       device="cpu", progress=False, tensorboard=False, log_every=10)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory):
    """Red vs blue noisy images whose embeddings are +u / -u plus noise; a VAE and variation model trained on them."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    labels = np.arange(32) % 2
    images = np.clip(COLOURS[labels][:, None, None, :] + rng.normal(0, 15, (32, SIZE, SIZE, 3)), 0, 255)
    images = images.astype(np.uint8)
    u = rng.normal(size=DIM)
    embeds = (np.where(labels[:, None] == 0, 1.0, -1.0) * u + 0.3 * rng.normal(size=(32, DIM))).astype(np.float32)
    root = tmp_path_factory.mktemp("recon")
    vae = train_autoencoder(images, train_config(root / "vae", 100))
    config = VariationConfig(embed_dim=DIM, latent_channels=4, latent_size=SIZE // 4, block_channels=(32, 64),
                             heads=2)
    model = train_variation_model(images, embeds, vae, train_config(root / "variation", 200), config=config)
    return {"images": images, "labels": labels, "u": u.astype(np.float32), "model": model,
            "run": root / "variation"}


def test_variation_loss_decreases(planted) -> None:
    losses = [row["loss/unet"] for row in read_rows(planted["run"] / "metrics.jsonl") if "loss/unet" in row]
    assert len(losses) == 20
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses  # measured: 0.62 -> 0.20


def test_reconstruction_follows_the_class_embedding(planted) -> None:
    rec = Reconstructor.from_model(planted["model"])
    assert rec.trained
    u = planted["u"]
    queries = np.stack([u] * 4 + [-u] * 4)  # 4 class-A then 4 class-B embeddings
    out = rec.reconstruct(queries, steps=10, guidance=3.0, seed=0, progress=False)
    assert out.shape == (8, SIZE, SIZE, 3) and out.dtype == np.uint8
    images, labels = planted["images"], planted["labels"]
    means = np.stack([images[labels == k].mean(axis=0) for k in (0, 1)]).astype(np.float64)  # (2, H, W, 3)
    dist = np.abs(out[:, None].astype(np.float64) - means[None]).mean(axis=(2, 3, 4))  # (8, 2)
    assert (dist[:4, 0] < dist[:4, 1]).all() and (dist[4:, 1] < dist[4:, 0]).all(), dist
    assert dist[np.arange(8), np.repeat([0, 1], 4)].max() < 30.0  # close to the right mean colour, not just nearer


def test_same_seed_same_images(planted) -> None:
    rec = Reconstructor.from_model(planted["model"])
    q = np.stack([planted["u"], -planted["u"]])
    a = rec.reconstruct(q, steps=5, seed=3, progress=False)
    b = rec.reconstruct(q, steps=5, seed=3, progress=False)
    c = rec.reconstruct(q, planted["images"][:2], steps=5, strength=1.0, seed=4, progress=False)
    np.testing.assert_array_equal(a, b)
    # batching does not change what each sample gets
    np.testing.assert_array_equal(rec.reconstruct(q, steps=5, seed=3, batch_size=1, progress=False), a)
    assert not np.array_equal(a, c)


def test_zero_strength_returns_the_lowlevel_image(planted) -> None:
    rec, images = Reconstructor.from_model(planted["model"]), planted["images"][:4]
    q = np.stack([-planted["u"]] * 4)  # the opposite class for the red images 0 and 2
    vae = planted["model"].vae
    roundtrip = decode_latents(vae, encode_latents(vae, images))
    assert len(img2img_timesteps(rec.scheduler, 10, 0.0)) == 0
    assert len(img2img_timesteps(rec.scheduler, 20, 0.85)) == 17
    np.testing.assert_array_equal(rec.reconstruct(q, images, steps=10, strength=0.0, progress=False), roundtrip)
    weak = rec.reconstruct(q, images, steps=10, strength=0.1, progress=False).astype(np.float64)
    full = rec.reconstruct(q, images, steps=10, strength=1.0, progress=False).astype(np.float64)
    err_weak, err_full = np.abs(weak - roundtrip).mean(), np.abs(full - roundtrip).mean()
    assert err_weak < 10.0 and err_full > 4 * err_weak, (err_weak, err_full)


def test_checkpoint_round_trip(planted) -> None:
    q = np.stack([planted["u"], -planted["u"]])
    a = Reconstructor.from_model(planted["model"]).reconstruct(q, steps=4, seed=1, progress=False)
    loaded = Reconstructor.load(planted["run"])
    assert loaded.trained and loaded.vae.trained
    np.testing.assert_array_equal(loaded.reconstruct(q, steps=4, seed=1, progress=False), a)
    meta = json.loads((planted["run"] / "final" / "config.json").read_text())
    assert meta["model_class"] == "ImageVariationUNet" and meta["config"]["variation"]["embed_dim"] == DIM


def test_tiny_is_untrained_and_checks_inputs() -> None:
    rec = Reconstructor.tiny(8, image_size=16, seed=0)
    assert not rec.trained and rec.image_size == 16
    out = rec.reconstruct(np.ones((2, 8), np.float32), np.zeros((2, 32, 32, 3), np.uint8), steps=2,
                          progress=False)  # low-level images are resized to the model's size
    assert out.shape == (2, 16, 16, 3)
    with pytest.raises(InvalidInputError):
        rec.reconstruct(np.ones((2, 9), np.float32), progress=False)
    with pytest.raises(InvalidInputError):
        rec.reconstruct(np.ones((2, 8), np.float32), np.zeros((3, 16, 16, 3), np.uint8), progress=False)
    with pytest.raises(InvalidInputError):
        rec.reconstruct(np.ones((2, 8), np.float32), strength=1.5, progress=False)


def test_unclip_conditioning_matches_closed_form() -> None:
    from diffusers import DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    d = 8
    normalizer = StableUnCLIPImageNormalizer(embedding_dim=d)
    with torch.no_grad():
        normalizer.mean.copy_(torch.linspace(-1, 1, d)[None])
        normalizer.std.copy_(torch.linspace(0.5, 2, d)[None])
    noising = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    prompt = torch.randn(1, 3, 5)
    cond_fn = UnclipConditioner(normalizer, noising, prompt, torch.zeros(1, 3, 5), noise_level=100)
    pooled = torch.randn(2, d)
    cond, uncond = cond_fn(pooled, torch.Generator().manual_seed(0))
    noise = torch.randn((2, d), generator=torch.Generator().manual_seed(0)).double()
    abar = noising.alphas_cumprod.double()[100]
    mean, std = normalizer.mean.detach().double(), normalizer.std.detach().double()
    expected = ((pooled.double() - mean) / std * abar.sqrt() + (1 - abar).sqrt() * noise) * std + mean
    half = d // 2
    freqs = torch.exp(-np.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    level = torch.cat([torch.cos(100 * freqs), torch.sin(100 * freqs)])  # flip_sin_to_cos: cos first
    torch.testing.assert_close(cond["class_labels"][:, :d].double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cond["class_labels"][:, d:].double(), level.expand(2, -1), rtol=1e-5, atol=1e-5)
    assert torch.equal(uncond["class_labels"], torch.zeros(2, 2 * d))
    assert torch.equal(cond["encoder_hidden_states"], prompt.expand(2, -1, -1))


def test_unclip_components_sample_end_to_end() -> None:
    """A Stable-unCLIP-shaped UNet (noise-augmented embedding + level as class labels, text context) samples."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer

    torch.manual_seed(0)
    d, dt = 8, 16
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                norm_num_groups=16, cross_attention_dim=dt, attention_head_dim=2,
                                class_embed_type="projection", projection_class_embeddings_input_dim=2 * d)
    base = Reconstructor.tiny(d, image_size=16)
    conditioner = UnclipConditioner(StableUnCLIPImageNormalizer(embedding_dim=d), DDPMScheduler(),
                                    torch.randn(1, 3, dt), torch.zeros(1, 3, dt))
    rec = Reconstructor(unet, DDIMScheduler(), base.vae, conditioner, image_size=16, trained=False, source="test")
    a = rec.reconstruct(np.ones((2, d), np.float32), steps=3, seed=0, progress=False)
    b = rec.reconstruct(np.ones((2, d), np.float32), steps=3, seed=0, progress=False)
    assert a.shape == (2, 16, 16, 3)
    np.testing.assert_array_equal(a, b)


def test_save_pngs(tmp_path) -> None:
    from PIL import Image

    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    paths = save_pngs(images, tmp_path / "pngs", ["a", "b_1"])
    assert [p.name for p in paths] == ["a.png", "b_1.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1])), images[1])
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["a.png", "b_1.png"]  # no temp files left
    with pytest.raises(InvalidInputError):
        save_pngs(images, tmp_path, ["../x", "y"])
    with pytest.raises(InvalidInputError):
        save_pngs(images, tmp_path, ["same", "same"])


def test_from_pretrained_refuses_a_non_pipeline_folder(tmp_path) -> None:
    from neuroattn.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"model_index\.json"):
        Reconstructor.from_pretrained(tmp_path)


def _tiny_stable_unclip_folder(folder, d: int, dt: int):
    """A randomly initialised StableUnCLIPImg2ImgPipeline (every component tiny) saved as a local folder."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    torch.manual_seed(0)
    vocab_dir = folder.parent / "vocab"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"), model_max_length=8)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=3, hidden_size=dt, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=8, bos_token_id=0,
                                        eos_token_id=1, pad_token_id=1))
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                            num_attention_heads=2, image_size=32, patch_size=16,
                                                            projection_dim=d))
    unet = UNet2DConditionModel(sample_size=4, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                norm_num_groups=16, cross_attention_dim=dt, attention_head_dim=2,
                                class_embed_type="projection", projection_class_embeddings_input_dim=2 * d)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                        norm_num_groups=16, sample_size=16)
    pipe = StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32), image_encoder=vision,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=d), image_noising_scheduler=DDPMScheduler(),
        tokenizer=tokenizer, text_encoder=text, unet=unet, scheduler=DDIMScheduler(), vae=vae)
    pipe.save_pretrained(folder)
    return pipe


def test_a_local_stable_unclip_folder_reconstructs_as_the_pipeline_does(tmp_path) -> None:
    """What ``--unclip`` does with real weights: a saved Stable unCLIP folder loads offline, and sampling from
    given image embeddings (no low-level image) gives diffusers' own pipeline output, pixel for pixel."""
    d = 8
    pipe = _tiny_stable_unclip_folder(tmp_path / "unclip", d, dt=16)
    rec = Reconstructor.from_pretrained(tmp_path / "unclip")
    assert rec.trained and rec.image_size == 8
    embeds = torch.randn(2, d, generator=torch.Generator().manual_seed(1))
    ours = rec.reconstruct(embeds.numpy(), steps=4, guidance=3.0, seed=7, progress=False)
    reference = pipe(image_embeds=embeds, prompt=[""] * 2, noise_level=0, num_inference_steps=4, guidance_scale=3.0,
                     generator=torch.Generator().manual_seed(7), output_type="np").images  # (2, 8, 8, 3) in [0, 1]
    assert ((ours > 0) & (ours < 255)).mean() > 0.5  # not a saturated image that any sampler would match
    np.testing.assert_allclose(ours.astype(np.float64), np.round(reference * 255.0), atol=1.0)
