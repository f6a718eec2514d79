"""BraInCoRL model: padding and permutation invariance, scale equivariance, attention read-out, checkpoints."""

from __future__ import annotations

import pytest
import torch

from neuroattn.encode.braincorl import BraInCoRL, BraInCoRLConfig, load_braincorl, support_stats
from neuroattn.errors import CheckpointError, ConfigError
from neuroattn.io.checkpoints import save_checkpoint

D = 12
# read-out paths: moment estimate, registers only, Bayes estimate under a Gaussian-mixture prior
PATHS = [{"moment_path": True}, {"moment_path": False}, {"moment_path": False, "prior_components": 2}]
PATH_IDS = ["moment", "registers", "prior"]


def _model(seed: int = 0, **overrides) -> BraInCoRL:
    """A small model with every parameter perturbed, so the zero-initialised read-out and A(k) matter too."""
    torch.manual_seed(seed)
    config = BraInCoRLConfig(embedding_dim=D, dim=32, depth=2, heads=4, n_registers=3, head_hidden=32, **overrides)
    model = BraInCoRL(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model.eval()


def _support(batch: int = 3, k: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, k, D, generator=g), 2.0 * torch.randn(batch, k, generator=g) + 1.0


def test_support_stats_match_numpy_over_valid_entries() -> None:
    y = torch.tensor([[1.0, 2.0, 4.0, 100.0], [3.0, 3.0, 3.0, 3.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    mean, std = support_stats(y, mask, 1e-6)
    torch.testing.assert_close(mean, torch.tensor([7 / 3, 3.0]))
    torch.testing.assert_close(std, torch.tensor([float(torch.tensor([1.0, 2.0, 4.0]).std(unbiased=False)), 1e-6]))


def test_output_shapes_and_predict() -> None:
    model = _model()
    x, y = _support()
    weights, bias = model(x, y)
    assert weights.shape == (3, D) and bias.shape == (3,)
    query = torch.randn(3, 5, D)
    expected = torch.stack([query[b] @ weights[b] + bias[b] for b in range(3)])
    torch.testing.assert_close(BraInCoRL.predict(weights, bias, query), expected)
    torch.testing.assert_close(BraInCoRL.predict(weights, bias, query[0]), torch.stack([query[0] @ w for w in weights])
                               + bias[:, None])  # fmt: skip


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_padding_changes_nothing(paths: dict) -> None:
    """Padded entries (even NaN or huge) leave weights, bias and support attention unchanged (1e-5)."""
    model = _model(1, **paths)
    x, y = _support(k=7, seed=1)
    ref_w, ref_b = model(x, y)
    ref_att = model.support_attention(x, y)
    pad = 5
    xp = torch.cat([x, 1e4 * torch.randn(3, pad, D)], dim=1)
    xp[:, -1, 0] = float("nan")
    yp = torch.cat([y, torch.full((3, pad), float("nan"))], dim=1)
    mask = torch.cat([torch.ones(3, 7, dtype=torch.bool), torch.zeros(3, pad, dtype=torch.bool)], dim=1)
    w, b = model(xp, yp, mask)
    torch.testing.assert_close(w, ref_w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, ref_b, rtol=1e-5, atol=1e-5)
    att = model.support_attention(xp, yp, mask)
    torch.testing.assert_close(att[:, :7], ref_att, rtol=1e-5, atol=1e-6)
    assert bool((att[:, 7:] == 0).all())


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_interleaved_padding_in_a_mixed_batch(paths: dict) -> None:
    """Two support sets of different sizes in one padded batch equal their separate unpadded runs."""
    model = _model(2, **paths)
    x, y = _support(batch=2, k=8, seed=2)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, [1, 4, 6]] = False
    w, b = model(x, y, mask)
    keep = mask[1]
    w1, b1 = model(x[1:, keep], y[1:, keep])
    w0, b0 = model(x[:1], y[:1])
    torch.testing.assert_close(w, torch.cat([w0, w1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b, torch.cat([b0, b1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_permutation_invariance_of_the_support_set(paths: dict) -> None:
    model = _model(3, **paths)
    x, y = _support(k=10, seed=3)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    w, b = model(x, y)
    wp, bp = model(x[:, perm], y[:, perm])
    torch.testing.assert_close(wp, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bp, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.support_attention(x[:, perm], y[:, perm]), model.support_attention(x, y)[:, perm])


@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("scale,shift", [(3.7, -12.0), (0.01, 5.0), (250.0, 0.0)])
def test_scale_equivariance(scale: float, shift: float, paths: dict) -> None:
    """responses * c + d (c > 0) -> predictions * c + d, in every response unit."""
    model = _model(4, **paths)
    x, y = _support(k=11, seed=4)
    query = torch.randn(3, 6, D)
    pred = BraInCoRL.predict(*model(x, y), query)
    pred_scaled = BraInCoRL.predict(*model(x, y * scale + shift), query)
    torch.testing.assert_close(pred_scaled, pred * scale + shift, rtol=1e-4, atol=1e-4 * scale)


def test_support_attention_rows_and_manual_reference() -> None:
    """Rows sum to 1 over valid pairs; the read-out equals a hand-run of the blocks' attention weights."""
    model = _model(5)
    x, y = _support(k=6, seed=5)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    att = model.support_attention(x, y, mask)
    torch.testing.assert_close(att.sum(dim=1), torch.ones(3))
    assert bool((att[0, 4:] == 0).all()) and bool((att[mask] > 0).all())
    inputs = model.encode_support(x, y, mask)
    h, keys, n_reg, n_pre = inputs["tokens"], inputs["key_mask"], model.config.n_registers, model.n_prefix
    expected = torch.zeros(3, 6)
    for block in model.blocks:
        normed = block.norm1(h)
        attn = block.attn
        q = attn.q_proj(normed).view(3, -1, attn.heads, attn.head_dim).transpose(1, 2)  # (B, h, N, hd)
        k = attn.kv_proj(normed).view(3, -1, 2, attn.kv_heads, attn.head_dim)[:, :, 0].transpose(1, 2)
        scores = (q @ k.transpose(-1, -2) / attn.head_dim**0.5).masked_fill(~keys[:, None, None], float("-inf"))
        part = scores.softmax(-1)[:, :, :n_reg, n_pre:]  # (B, h, R, k)
        expected += (part / part.sum(-1, keepdim=True)).mean(dim=(1, 2))
        h = block(h, key_padding_mask=keys)
    torch.testing.assert_close(att, expected / len(model.blocks), rtol=1e-5, atol=1e-6)


def test_bad_inputs_and_config() -> None:
    model = _model()
    x, y = _support()
    with pytest.raises(ValueError, match="embeddings"):
        model(x[..., :5], y)
    with pytest.raises(ValueError, match="responses"):
        model(x, y[:, :3])
    with pytest.raises(ValueError, match="at least one valid"):
        model(x, y, torch.zeros_like(y, dtype=torch.bool))
    with pytest.raises(ConfigError, match="divisible"):
        BraInCoRLConfig(embedding_dim=D, dim=30, heads=4)
    with pytest.raises(ConfigError, match="embedding_dim"):
        BraInCoRLConfig(embedding_dim=0)


def test_checkpoint_round_trip(tmp_path) -> None:
    model = _model(6)
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), model.config.to_dict(), model_class="BraInCoRL",
                    trained=True)  # fmt: skip
    loaded = load_braincorl(tmp_path / "ckpt")
    assert loaded.config == model.config and not loaded.training
    x, y = _support(seed=6)
    for a, b in zip(loaded(x, y), model(x, y), strict=True):
        assert torch.equal(a, b)
    bad = model.config.to_dict() | {"depth": 3}
    save_checkpoint(tmp_path / "bad", model.state_dict(), bad, model_class="BraInCoRL", trained=True)
    with pytest.raises(CheckpointError, match="missing"):
        load_braincorl(tmp_path / "bad")
    save_checkpoint(tmp_path / "other", model.state_dict(), model.config.to_dict(), model_class="Other", trained=True)
    with pytest.raises(CheckpointError, match="expected a BraInCoRL"):
        load_braincorl(tmp_path / "other")


def test_moment_path_closed_form_at_initialisation() -> None:
    """Freshly built: weights = std * c * X^T z / k and bias = mean - x_mean . weights (float64 reference)."""
    torch.manual_seed(7)
    model = BraInCoRL(BraInCoRLConfig(embedding_dim=D, dim=32, depth=2, heads=4, moment_init=0.3)).double().eval()
    x, y = (t.double() for t in _support(k=15, seed=7))
    mask = torch.ones(3, 15, dtype=torch.bool)
    mask[2, 9:] = False
    w, b = model(x, y, mask)
    for i in range(3):
        xs, ys = x[i, mask[i]].numpy(), y[i, mask[i]].numpy()
        z = (ys - ys.mean()) / ys.std()
        expected = ys.std() * 0.3 * xs.T @ z / len(ys)
        torch.testing.assert_close(w[i], torch.from_numpy(expected))
        torch.testing.assert_close(b[i], torch.tensor(ys.mean() - xs.mean(0) @ expected, dtype=torch.float64))


def test_moment_weights_equal_the_explicit_matrix() -> None:
    """(A0 + g0(k) I + P diag(g(k)) Q^T) m, built as a D x D matrix per voxel in float64."""
    model = _model(8).double()
    g = torch.Generator().manual_seed(8)
    m, log_k = torch.randn(4, D, generator=g, dtype=torch.float64), torch.tensor([1.0, 2.5, 4.0, 6.0]).double()
    gain = model.moment_gain(log_k[:, None])
    assert gain.abs().min() > 0  # the perturbed gains are all active
    for i in range(4):
        a = model.moment_map + gain[i, 0] * torch.eye(D, dtype=torch.float64)
        a = a + model.moment_left @ torch.diag(gain[i, 1:]) @ model.moment_right.T
        torch.testing.assert_close(model.moment_weights(m, log_k)[i], a @ m[i])


def test_moment_path_switch() -> None:
    on, off = _model(9), _model(9, moment_path=False)
    assert on.n_prefix == 4 and off.n_prefix == 3 and not hasattr(off, "moment_map")
    x, y = _support(seed=9)
    assert on.encode_support(x, y)["tokens"].shape == (3, 4 + 9, 32)
    assert off.encode_support(x, y)["tokens"].shape == (3, 3 + 9, 32)
    with pytest.raises(ConfigError, match="moment_rank"):
        BraInCoRLConfig(embedding_dim=D, moment_rank=0)
