"""2.5D slicing: scaling round trips, stacks at the edges, whole-volume inference per plane, fusion, slice banks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroattn.errors import ConfigError
from neuroattn.harmonize.slices import (
    IntensityScaling,
    fit_scaling,
    fuse_planes,
    gather_stacks,
    plane_consistency,
    plane_view,
    pool_scalings,
    slice_jitter,
    translate_volume,
)
from neuroattn.harmonize.training import SliceBank, UnpairedStacks, common_canvas

ODD_SHAPE = (2, 7, 9, 5)  # (C, X, Y, Z)
AXIS = {"axial": 3, "coronal": 2, "sagittal": 1}


class CentreSlice(torch.nn.Module):
    """Identity generator: the centre slice of each 3-slice stack of ``channels`` modalities."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.channels : 2 * self.channels]


class Weighted(torch.nn.Module):
    """``prev + 10 * centre + 100 * next`` of a one-modality stack: reveals neighbour order and edge padding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0:1] + 10 * x[:, 1:2] + 100 * x[:, 2:3]


def volume(shape=ODD_SHAPE, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).gamma(2.0, 100.0, size=shape) + 5).astype(np.float32)


def test_scaling_maps_percentiles_and_inverts():
    vol = volume()
    mask = np.zeros(vol.shape[1:], dtype=bool)
    mask[1:-1, 1:-1, :] = True
    scaling = fit_scaling(vol, mask, (2.0, 98.0))
    probe = []
    for c in range(vol.shape[0]):
        lo, hi = np.percentile(vol[c][mask].astype(np.float64), (2.0, 98.0))
        assert scaling.low[c] == pytest.approx(lo) and scaling.high[c] == pytest.approx(hi)
        probe.append([lo, hi, (lo + hi) / 2])
    np.testing.assert_allclose(scaling.scale(np.array(probe)), [[-1.0, 1.0, 0.0]] * 2, atol=1e-6)
    back = scaling.unscale(scaling.scale(vol))
    np.testing.assert_allclose(back, vol, rtol=2e-6, atol=1e-4)
    again = IntensityScaling.from_dict(scaling.to_dict())
    assert again == scaling
    pooled = pool_scalings([IntensityScaling((0.0,), (1.0,)), IntensityScaling((2.0,), (5.0,)),
                            IntensityScaling((1.0,), (9.0,))])
    assert pooled == IntensityScaling((1.0,), (5.0,))  # medians
    with pytest.raises(ValueError, match="low < high"):
        IntensityScaling((1.0,), (1.0,))


@pytest.mark.parametrize("planes", ["axial", "coronal", "sagittal", "all"])
@pytest.mark.parametrize("shape", [ODD_SHAPE, ODD_SHAPE[1:]])
def test_identity_generator_returns_the_input(planes, shape):
    vol = volume(shape)
    channels = 1 if len(shape) == 3 else shape[0]
    result = translate_volume(CentreSlice(channels), vol, None, planes=planes, batch_size=3, clip_input=False)
    assert result.data.shape == vol.shape and result.data.dtype == np.float32
    np.testing.assert_allclose(result.data, vol, rtol=2e-6, atol=1e-4)
    if planes == "all":
        assert result.consistency["plane_std"] == pytest.approx(0.0, abs=1e-4)


def test_clipping_background_and_output_scale():
    vol = volume(ODD_SHAPE[1:])
    mask = np.ones(vol.shape, dtype=bool)
    mask[0] = False
    inp = fit_scaling(vol, mask)
    out_scale = IntensityScaling((10.0,), (20.0,))
    got = translate_volume(CentreSlice(1), vol, mask, inp, output_scaling=out_scale, planes="coronal").data
    expected = out_scale.unscale(np.clip(inp.scale(vol[None]), -1, 1))[0]
    np.testing.assert_allclose(got[mask], expected[mask], rtol=1e-5)
    assert (got[~mask] == 0).all()
    assert got[mask].min() >= 10.0 - 1e-4 and got[mask].max() <= 20.0 + 1e-4  # saturated beyond the percentiles


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_neighbours_are_ordered_and_edge_replicated(plane):
    vol = volume(ODD_SHAPE[1:], seed=2)
    scaling = IntensityScaling((float(vol.min()) - 1,), (float(vol.max()) + 1,))
    got = translate_volume(Weighted(), vol, None, scaling, output_scaling=scaling, planes=plane, batch_size=2,
                           clip_input=False, background=None).data
    x = np.moveaxis(scaling.scale(vol[None])[0].astype(np.float64), AXIS[plane] - 1, -1)  # (H, W, D)
    prev = np.concatenate([x[..., :1], x[..., :-1]], axis=-1)  # replicate padding at the first slice
    nxt = np.concatenate([x[..., 1:], x[..., -1:]], axis=-1)
    expected = scaling.unscale(np.moveaxis(prev + 10 * x + 100 * nxt, -1, AXIS[plane] - 1)[None])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_gather_stacks_slice_major():
    vol = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)  # (C, H, W, D) view
    stacks = gather_stacks(vol, torch.tensor([0, 4]), 3)  # (2, 3 * 2, 3, 4)
    assert stacks.shape == (2, 6, 3, 4)
    for n, z in enumerate((0, 4)):
        for s, zz in enumerate(np.clip([z - 1, z, z + 1], 0, 4)):
            for c in range(2):
                torch.testing.assert_close(stacks[n, s * 2 + c], vol[c, :, :, zz])


def test_fusion_and_consistency_closed_forms():
    a, b, c = (np.full((1, 3, 3, 4), v, dtype=np.float32) for v in (1.0, 2.0, 7.0))
    np.testing.assert_array_equal(fuse_planes([a, b, c]), b)
    np.testing.assert_allclose(fuse_planes([a, b, c], "mean"), np.full_like(a, 10 / 3))
    with pytest.raises(ConfigError):
        fuse_planes([a], "max")
    ramp = np.broadcast_to(np.arange(6, dtype=np.float32), (4, 5, 6)).copy()  # linear along Z
    assert slice_jitter(ramp, None, "axial") == pytest.approx(0.0)
    zigzag = np.broadcast_to(np.array([0, 1] * 3, dtype=np.float32), (4, 5, 6)).copy()
    assert slice_jitter(zigzag, None, "axial") == pytest.approx(2.0)  # |1 - 0 - 0| ... = 2 every slice
    stats = plane_consistency({"axial": a, "coronal": c}, None)
    assert stats["plane_std"] == pytest.approx(3.0)  # std of {1, 7}


def test_slice_bank_windows_and_canvas():
    rng = np.random.default_rng(0)
    vol = rng.uniform(-0.9, 0.9, size=(2, 6, 7, 8)).astype(np.float32)
    mask = np.zeros((6, 7, 8), dtype=bool)
    mask[1:5, 1:6, 2:7] = True
    mask[3, 3, 1] = True  # one voxel: below min_brain_fraction, slice 1 is skipped
    bank = SliceBank([vol], [mask], planes=["axial"], window_slices=5)
    assert bank.canvas == (8, 8) == common_canvas([(6, 7, 8)], ["axial"])
    assert [z for _, _, z in bank.index] == [2, 3, 4, 5, 6]
    window, win_mask = bank[0]  # centre slice 2: slices 0..4
    assert window.shape == (10, 8, 8) and win_mask.shape == (1, 8, 8)
    for s, z in enumerate(range(0, 5)):
        for c in range(2):
            np.testing.assert_array_equal(window[s * 2 + c, :6, :7].numpy(), vol[c, :, :, z])
            np.testing.assert_array_equal(window[s * 2 + c, 6:, :7].numpy(), np.repeat(vol[c, -1:, :, z], 2, 0))
    np.testing.assert_array_equal(win_mask[0, :6, :7].numpy(), mask[:, :, 2])
    assert win_mask[0, 6:].sum() == 0 and win_mask[0, :, 7:].sum() == 0
    last, _ = bank[4]  # centre slice 6: slices 4, 5, 6, 7, 7 (replicated)
    np.testing.assert_array_equal(last[8, :6, :7].numpy(), vol[0, :, :, 7])
    both = SliceBank([vol], [mask], planes=["axial", "sagittal"], window_slices=3)
    assert both.canvas == (8, 8) and {p for _, p, _ in both.index} == {0, 1}
    clipped = SliceBank([vol * 10], [mask])
    assert float(clipped.volumes[0].abs().max()) == 1.0  # saturated to the tanh range


def test_unpaired_stacks_are_seeded():
    vol = np.random.default_rng(1).normal(size=(1, 8, 8, 6)).astype(np.float32)
    mask = np.ones((8, 8, 6), dtype=bool)
    data = UnpairedStacks(SliceBank([vol], [mask]), SliceBank([vol * 0.5, vol * 0.25], [mask, mask]))
    assert len(data) == 12
    torch.manual_seed(0)
    first = [data[i]["b"] for i in range(4)]
    torch.manual_seed(0)
    again = [data[i]["b"] for i in range(4)]
    for x, y in zip(first, again, strict=True):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(data[3]["a"], SliceBank([vol], [mask])[3][0])


def test_plane_view_writes_through():
    arr = np.zeros((1, 2, 3, 4), dtype=np.float32)
    plane_view(arr, "sagittal")[..., 1] = 5.0  # (C, Y, Z, X): X index 1
    assert (arr[:, 1] == 5.0).all() and arr.sum() == 5.0 * 12


def test_random_crops_are_patches_of_the_slice():
    vol = np.random.default_rng(3).uniform(-0.9, 0.9, size=(1, 10, 12, 6)).astype(np.float32)
    mask = np.ones((10, 12, 6), dtype=bool)
    whole = SliceBank([vol], [mask])
    cropped = SliceBank([vol], [mask], crop_size=5)
    torch.manual_seed(0)
    offsets = set()
    for _ in range(6):
        patch, patch_mask = cropped[2]
        assert patch.shape == (5, 5, 5) and patch_mask.shape == (1, 5, 5)
        full = whole[2][0]
        hits = [(top, left) for top in range(12 - 5 + 1) for left in range(12 - 5 + 1)
                if torch.equal(full[:, top : top + 5, left : left + 5], patch)]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 1
    with pytest.raises(ConfigError, match="crop_size"):
        SliceBank([vol], [mask], crop_size=13)
