"""Brain-IT on planted multi-subject data: shared clusters, joint training, new-subject adaptation, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from neuroattn.decode.base import BrainDecoder, normalize_rows
from neuroattn.decode.brain_it import BrainITConfig
from neuroattn.decode.brain_it_training import (
    PRIOR_VARIANCE_FLOOR,
    BrainITDecoder,
    BrainITSubject,
    BrainITTask,
    EmbeddingPrior,
    adapt_new_subject,
    load_brain_it,
    place_subject,
    train_brain_it,
)
from neuroattn.decode.voxel_clusters import encoding_profiles, fit_voxel_clusters
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.checkpoints import load_checkpoint, save_checkpoint
from neuroattn.train import TrainConfig
from neuroattn.train.state import latest_checkpoint, load_training_state

torch.set_num_threads(1)

N_TYPES, RANK, N_TEST, N_TRAIN, FEW = 8, 8, 50, 240, 24  # FEW = 10% of a subject's training images
L, D, C, SIDE = 17, 32, 2, 8  # tokens (1 pooled + 4x4 grid) of width D; latents (C, SIDE, SIDE)
CONFIG = BrainITConfig.tiny(n_tokens=L, clip_dim=D, dim=48, heads=4, latent_channels=C, latent_size=SIDE,
                            latent_grid=2)


def planted_subjects(seed: int = 0, n_voxels: tuple[int, ...] = (96, 104, 88, 100)) -> dict[str, Any]:
    """Items with a rank-8 latent ``z``; CLIP-like tokens and VAE-like latents are linear in ``z`` (+ noise).

    Every voxel of every subject is a noisy copy of one of 8 shared functional types (orthonormal directions
    in ``z``) with its own gain; SNR about 1 per trial. All subjects see the same 50 test items and their own
    240 training items; betas are z-scored per voxel over the training trials.
    """
    rng = np.random.default_rng(seed)
    n_items = N_TEST + len(n_voxels) * N_TRAIN
    z = rng.normal(size=(n_items, RANK))
    tokens = (z @ rng.normal(size=(RANK, L * D)) / np.sqrt(RANK)).reshape(n_items, L, D)
    tokens = (tokens + 0.1 * rng.normal(size=tokens.shape)).astype(np.float32)
    latents = (z @ rng.normal(size=(RANK, C * SIDE * SIDE)) / np.sqrt(RANK)).reshape(n_items, C, SIDE, SIDE)
    directions = np.linalg.qr(rng.normal(size=(RANK, RANK)))[0][:N_TYPES]  # (K, r)
    subjects = []
    for s, v in enumerate(n_voxels):
        types = rng.permutation(np.tile(np.arange(N_TYPES), -(-v // N_TYPES))[:v])
        gain = rng.uniform(0.7, 1.3, size=v)
        train_items = N_TEST + s * N_TRAIN + np.arange(N_TRAIN)
        test_items = np.arange(N_TEST)
        train = z[train_items] @ directions[types].T * gain + rng.normal(size=(N_TRAIN, v))
        test = z[test_items] @ directions[types].T * gain + rng.normal(size=(N_TEST, v))
        mu, sd = train.mean(0), train.std(0)
        subjects.append({"types": types, "train": ((train - mu) / sd).astype(np.float32),
                         "test": ((test - mu) / sd).astype(np.float32), "train_items": train_items})
    return {"tokens": tokens, "latents": latents.astype(np.float32), "subjects": subjects}


def _train_config(out_dir: Path, steps: int, batch_size: int, lr: float) -> TrainConfig:
    return TrainConfig(out_dir, max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=10, device="cpu",
                       progress=False, checkpoint_every=0, tensorboard=False, log_every=10)


def top1(decoder: BrainDecoder, betas: np.ndarray, tokens: np.ndarray) -> float:
    """Top-1 brain -> image retrieval among the test items in the flattened normalised token space."""
    targets = normalize_rows(tokens.reshape(len(tokens), -1))
    scores = decoder.brain_embeddings(betas) @ targets.T  # (N, N)
    return float(np.mean(scores.argmax(1) == np.arange(len(tokens))))


@pytest.fixture(scope="module")
def planted() -> dict[str, Any]:
    return planted_subjects()


@pytest.fixture(scope="module")
def joint_run(planted: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokens, latents = planted["tokens"], planted["latents"]
    data = [BrainITSubject(s["train"], tokens[s["train_items"]], latents[s["train_items"]])
            for s in planted["subjects"][:3]]
    run = tmp_path_factory.mktemp("brain_it") / "joint"
    result = train_brain_it(data, CONFIG, _train_config(run, 200, 32, 3e-3))
    assert result.finished
    return run


def test_clusters_recover_planted_functional_types(planted: dict[str, Any]) -> None:
    tokens, subjects = planted["tokens"], planted["subjects"]
    profiles = [encoding_profiles(s["train"], tokens[s["train_items"], 0]) for s in subjects]
    clusters, labels = fit_voxel_clusters(profiles[:3], N_TYPES, seed=0, n_components=N_TYPES)
    joint = adjusted_rand_score(np.concatenate([s["types"] for s in subjects[:3]]), np.concatenate(labels))
    assert joint >= 0.95  # one clustering over all subjects: a type is one cluster in every subject
    few = subjects[3]
    few_profiles = encoding_profiles(few["train"][:FEW], tokens[few["train_items"][:FEW], 0])
    assert adjusted_rand_score(few["types"], clusters.predict(few_profiles)) >= 0.8  # new subject, 24 images


def test_joint_training_retrieves_held_out_items(planted: dict[str, Any], joint_run: Path) -> None:
    test_tokens, test_latents = planted["tokens"][:N_TEST], planted["latents"][:N_TEST]
    for i, subject in enumerate(planted["subjects"][:3]):
        decoder = BrainITDecoder.load(joint_run, f"subj{i + 1:02d}")
        assert isinstance(decoder, BrainDecoder) and decoder.name == "brain-it"
        assert decoder.trained is False  # the target tokens were not declared as coming from trained CLIP
        accuracy = top1(decoder, subject["test"], test_tokens)
        assert accuracy >= 0.8, (i, accuracy)  # chance is 1/50; measured 0.96-1.0
        latents = decoder.predict_latents(subject["test"])
        assert latents is not None and latents.shape == (N_TEST, C, SIDE, SIDE)
        corr = np.corrcoef(latents.ravel(), test_latents.ravel())[0, 1]
        assert corr >= 0.5, (i, corr)  # measured about 0.72
        emb = decoder.brain_embeddings(subject["test"][:3])
        assert emb.shape == (3, L * D)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_checkpoint_round_trip_gives_identical_outputs(
    planted: dict[str, Any], joint_run: Path, tmp_path: Path
) -> None:
    betas = planted["subjects"][1]["test"][:8]
    model, clusters, ckpt = load_brain_it(joint_run)
    assert ckpt.trained and ckpt.data_summary["clip_trained"] is False
    _, state = load_training_state(latest_checkpoint(joint_run / "checkpoints"))
    trained = load_brain_it(joint_run)[0]
    trained.load_state_dict(state["modules"]["brain_it"])  # the weights in memory at the last step
    task = BrainITTask(model, clusters, None, list(model.subjects))  # type: ignore[arg-type]
    save_checkpoint(tmp_path / "again", task.export_state_dict({}), task.model_config(), model_class="BrainIT",
                    trained=True, data_summary=ckpt.data_summary)
    again, again_clusters, _ = load_brain_it(tmp_path / "again")
    with torch.no_grad():
        x = torch.from_numpy(betas)
        ref = trained("subj02", x)
        for other in (model, again):
            out = other("subj02", x)
            assert torch.equal(out.tokens, ref.tokens) and torch.equal(out.latents, ref.latents)
    np.testing.assert_array_equal(again_clusters.means, clusters.means)
    decoded = BrainITDecoder.load(tmp_path / "again", "subj02").predict_clip(betas)
    np.testing.assert_array_equal(decoded, ref.tokens.numpy())


def test_adaptation_trains_only_new_embeddings_and_beats_training_alone(
    planted: dict[str, Any], joint_run: Path, tmp_path: Path
) -> None:
    tokens, latents = planted["tokens"], planted["latents"]
    new = planted["subjects"][3]
    items = new["train_items"][:FEW]
    adapt = adapt_new_subject(joint_run, new["train"][:FEW], tokens[items],
                              _train_config(tmp_path / "adapt", 80, 8, 1e-2), latents=latents[items], subject="subj04")
    assert adapt.finished
    before = load_checkpoint(joint_run / "final").state_dict
    after = load_checkpoint(tmp_path / "adapt" / "final").state_dict
    new_keys = {k for k in after if k.startswith("model.subjects.subj04.")}
    assert new_keys == {"model.subjects.subj04.embedding", "model.subjects.subj04.cluster"}
    assert set(after) - new_keys == set(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # shared weights and other subjects: bit-identical

    model, clusters, _ = load_brain_it(tmp_path / "adapt")
    profiles = encoding_profiles(new["train"][:FEW], tokens[items, 0], alpha=CONFIG.profile_alpha)
    labels, start = clusters.place_noisy(clusters.embed(profiles))  # where the new voxels started
    moved = (model.subjects["subj04"].embedding - torch.from_numpy(start)).norm() / np.linalg.norm(start)
    assert moved > 0.05  # the embeddings did train
    np.testing.assert_array_equal(model.subjects["subj04"].cluster.numpy(), labels)

    alone = train_brain_it([(new["train"][:FEW], tokens[items], latents[items])], CONFIG,
                           _train_config(tmp_path / "alone", 200, 8, 3e-3))  # more steps than the adaptation
    assert alone.finished
    test_tokens = tokens[:N_TEST]
    adapted = top1(BrainITDecoder.load(tmp_path / "adapt", "subj04"), new["test"], test_tokens)
    scratch = top1(BrainITDecoder.load(tmp_path / "alone", "subj01"), new["test"], test_tokens)
    assert adapted >= 0.8 and adapted >= scratch + 0.15, (adapted, scratch)  # measured 0.94 vs about 0.6


def test_placing_a_new_subject_from_full_data_profiles_decodes_it_zero_shot(
    planted: dict[str, Any], joint_run: Path
) -> None:
    """No training at all: the frozen model reads a new subject whose voxels are only placed from their profiles."""
    tokens, new = planted["tokens"], planted["subjects"][3]
    model, clusters, _ = load_brain_it(joint_run)
    profiles = encoding_profiles(new["train"], tokens[new["train_items"], 0], alpha=CONFIG.profile_alpha)
    voxels, variance = place_subject(model, clusters, profiles, "subj04")
    assert variance.shape == tuple(voxels.embedding.shape) and (variance >= 0).all()
    placed = top1(BrainITDecoder(model, "subj04", trained=False), new["test"], tokens[:N_TEST])
    assert placed >= 0.7, placed  # chance 0.02; measured 0.94 (10% adapted: 0.94, trained alone on 10%: ~0.6)
    with pytest.raises(InvalidInputError, match="the run's clusters"):
        place_subject(model, clusters, profiles[:, :-1], "subj05")


def test_adaptation_prior_holds_embeddings_at_their_placement(
    planted: dict[str, Any], joint_run: Path, tmp_path: Path
) -> None:
    """A strong embedding prior keeps the new voxels at their profile placement; the logged term is its closed form."""
    tokens, latents = planted["tokens"], planted["latents"]
    new = planted["subjects"][3]
    items = new["train_items"][:FEW]
    result = adapt_new_subject(joint_run, new["train"][:FEW], tokens[items],
                               _train_config(tmp_path / "prior", 40, 8, 1e-2), latents=latents[items],
                               subject="subj04", prior_weight=1e4)  # fmt: skip
    assert result.finished
    model, clusters, ckpt = load_brain_it(tmp_path / "prior")
    assert ckpt.data_summary["adapt_prior_weight"] == 1e4
    profiles = encoding_profiles(new["train"][:FEW], tokens[items, 0], alpha=CONFIG.profile_alpha)
    _, start, variance = clusters.posterior(clusters.embed(profiles))
    embedding = model.subjects["subj04"].embedding.detach().numpy()
    moved = np.linalg.norm(embedding - start) / np.linalg.norm(start)
    assert moved < 0.01, moved  # free adaptation moves them > 0.05 (test above)
    floored = np.maximum(variance, PRIOR_VARIANCE_FLOOR)
    prior = EmbeddingPrior("subj04", torch.from_numpy(start), torch.from_numpy(floored), 2.0)
    expected = 2.0 * np.mean((embedding.astype(np.float64) - start) ** 2 / floored)
    np.testing.assert_allclose(float(prior.penalty(torch.from_numpy(embedding))), expected, rtol=1e-4)
    with pytest.raises(ConfigError, match="prior_weight"):
        adapt_new_subject(joint_run, new["train"][:FEW], tokens[items], _train_config(tmp_path / "bad", 1, 8, 1e-2),
                          subject="subj05", prior_weight=-1.0)


def test_bad_inputs_are_refused(planted: dict[str, Any], joint_run: Path, tmp_path: Path) -> None:
    subject = planted["subjects"][0]
    tokens = planted["tokens"][subject["train_items"]]
    with pytest.raises(InvalidInputError, match="n_tokens"):
        train_brain_it([(subject["train"], tokens[:, :5])], CONFIG, _train_config(tmp_path / "x", 1, 4, 1e-3))
    with pytest.raises(ConfigError, match="own out_dir"):
        adapt_new_subject(joint_run, subject["train"], tokens, _train_config(joint_run, 1, 4, 1e-3))
    with pytest.raises(ConfigError, match="already"):
        adapt_new_subject(joint_run, subject["train"], tokens, _train_config(tmp_path / "y", 1, 4, 1e-3),
                          subject="subj01")
    decoder = BrainITDecoder.load(joint_run, "subj01")
    with pytest.raises(InvalidInputError, match="96 voxels"):
        decoder.predict_clip(np.zeros((2, 95), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="unknown subject"):
        BrainITDecoder.load(joint_run, "subj09")


def test_bimixco_phase_mixes_within_subjects_and_maps_partners_to_output_rows(
    joint_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During the first ``mixup_fraction`` of steps the loss is BiMixCo on inputs mixed within each subject; the
    partner indices it uses point at the output row of the same subject's partner trial."""
    import neuroattn.decode.brain_it_training as bit

    model, clusters, _ = load_brain_it(joint_run)
    model.config.mixup_fraction = 0.5
    subjects = list(model.subjects)
    task = BrainITTask(model, clusters, None, subjects, max_steps=10)  # type: ignore[arg-type]
    assert task.mixup_steps == 5
    gen = torch.Generator().manual_seed(0)
    width = max(m.n_voxels for m in model.subjects.values())
    subject = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    betas = torch.randn(8, width, generator=gen)
    for i, si in enumerate(subject.tolist()):
        betas[i, model.subjects[subjects[si]].n_voxels :] = 0.0  # padding past each subject's voxels
    task.dataset = type("Widths", (), {"n_voxels": [model.subjects[s].n_voxels for s in subjects]})()
    cfg = model.config
    batch = {"betas": betas, "subject": subject, "tokens": torch.randn(8, cfg.n_tokens, cfg.clip_dim),
             "latents": torch.zeros(8, cfg.latent_channels, cfg.latent_size, cfg.latent_size),
             "has_latents": torch.zeros(8, dtype=torch.bool)}
    seen = {}
    original = bit.brain_it_loss

    def spy(*args, **kwargs):
        seen["mix"] = args[6] if len(args) > 6 else kwargs.get("mix")
        return original(*args, **kwargs)

    monkeypatch.setattr(bit, "brain_it_loss", spy)
    torch.manual_seed(3)
    _, loss, metrics = next(task.losses(batch, step=2))
    order = torch.cat([torch.nonzero(subject == s).flatten() for s in torch.unique(subject)])
    mix = seen["mix"]
    assert metrics["bimixco"] == 1.0 and torch.isfinite(loss)
    assert torch.equal(subject[order][mix.perm], subject[order])  # partners share the subject
    b = mix.betas[:, None]
    torch.testing.assert_close(mix.voxels, b * betas[order] + (1 - b) * betas[order][mix.perm])
    next(task.losses(batch, step=5))
    assert seen["mix"] is None  # SoftCLIP from step mixup_steps on
