"""Spec validation: every invalid pattern raises ValueError naming the problem."""

from __future__ import annotations

import pytest
import torch

from neuroattn.attention import Axial, Dense, Linear, Neighborhood, Window, attend, plan_attention
from neuroattn.attention.specs import check_spec


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Neighborhood(4), "odd"),
        (lambda: Neighborhood((3, 6)), "odd"),
        (lambda: Neighborhood(0), ">= 1"),
        (lambda: Neighborhood(3, dilation=0), "dilation must be >= 1"),
        (lambda: Neighborhood(3.0), "int"),
        (lambda: Neighborhood((3, 5), dilation=(1, 1, 1)), "entries"),
        (lambda: Neighborhood(3, causal="yes"), "bool"),
        (lambda: Window(0), "size must be >= 1"),
        (lambda: Window(4, shift=4), "smaller than the window size"),
        (lambda: Window(4, shift=-1), "shift must be >= 0"),
        (lambda: Window((4, 4), shift=(1, 2, 3)), "entries"),
        (lambda: Linear("softmax"), "feature_map must be one of"),
        (lambda: Dense(causal=1), "bool"),
    ],
)
def test_invalid_spec_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("spec", "spatial", "match"),
    [
        (Neighborhood(9), (8,), "kernel_size 9 is larger than spatial axis 0 of length 8"),
        (Neighborhood(3, dilation=3), (8,), r"kernel_size x dilation = 3x3 = 9 is larger than spatial axis 0"),
        (Neighborhood((3, 5, 3)), (8, 8), "3 entries but the input has 2 spatial axes"),
        (Neighborhood((3, 11)), (16, 8), "spatial axis 1 of length 8"),
        (Window(3), (8, 9), "Window size 3 does not divide spatial axis 0 of length 8"),
        (Window((2, 2)), (4, 4, 4), "2 entries but the input has 3 spatial axes"),
        ("dense", (8,), "spec must be one of"),
    ],
)
def test_spec_against_grid_raises(spec, spatial, match):
    with pytest.raises(ValueError, match=match):
        check_spec(spec, spatial, spatial)
    if not isinstance(spec, str):
        with pytest.raises(ValueError, match=match):
            plan_attention(spatial, spec)


def test_even_kernel_allowed_on_causal_axis_only():
    spec = Neighborhood((4, 3), causal=(True, False))
    assert spec.resolve((8, 8)) == ((4, 3), (1, 1), (True, False))
    with pytest.raises(ValueError, match="odd"):
        Neighborhood((4, 3), causal=(False, True))


def test_scalar_arguments_broadcast_to_every_axis():
    assert Neighborhood(3, dilation=2, causal=True).resolve((7, 8, 9)) == ((3, 3, 3), (2, 2, 2), (True, True, True))
    assert Window(4, 2).resolve((8, 8, 4, 4)) == ((4, 4, 4, 4), (2, 2, 2, 2))


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "spec", "match"),
    [
        ((1, 2, 8, 4), (1, 2, 6, 4), Neighborhood(3), "same token grid"),
        ((1, 2, 8, 4), (1, 2, 6, 4), Dense(causal=True), "as many keys as queries"),
        ((1, 3, 8, 4), (1, 2, 8, 4), Dense(), "multiple of key/value heads"),
        ((1, 2, 8, 4), (1, 2, 8, 5), Dense(), "same head_dim"),
        ((1, 2, 4), (1, 2, 4), Dense(), "spatial"),
        ((1, 2, 2, 2, 2, 2, 2, 4), (1, 2, 2, 2, 2, 2, 2, 4), Dense(), "1 to 4 spatial axes"),
        ((2, 2, 8, 4), (1, 2, 8, 4), Dense(), "batch size"),
    ],
)
def test_bad_tensor_shapes_raise(q_shape, k_shape, spec, match):
    q, k = torch.zeros(q_shape), torch.zeros(k_shape)
    with pytest.raises(ValueError, match=match):
        attend(q, k, k, spec)


def test_key_padding_mask_validation():
    q = torch.zeros(2, 1, 6, 4)
    keep = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(ValueError, match="only supported with Dense"):
        attend(q, q, q, Neighborhood(3), key_padding_mask=keep)
    with pytest.raises(ValueError, match="bool tensor of shape"):
        attend(q, q, q, Dense(), key_padding_mask=keep[:, :5])
    with pytest.raises(ValueError, match="masks every key"):
        attend(q, q, q, Dense(), key_padding_mask=keep & torch.tensor([[True], [False]]))
    first_masked = keep.clone()
    first_masked[:, 0] = False
    with pytest.raises(ValueError, match="query 0 would attend to nothing"):
        attend(q, q, q, Dense(causal=True), key_padding_mask=first_masked)


def test_mixed_dtypes_and_unknown_backend_raise():
    q = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="one dtype"):
        attend(q, q.double(), q, Dense())
    with pytest.raises(ValueError, match="'backend' must be one of"):
        attend(q, q, q, Dense(), backend="fast")


def test_specs_are_frozen_and_hashable():
    spec = Neighborhood((3, 5), dilation=(1, 2))
    assert hash(spec) == hash(Neighborhood((3, 5), dilation=(1, 2)))
    with pytest.raises(AttributeError):
        spec.kernel_size = 7  # type: ignore[misc]
    assert {Axial(), Axial()} == {Axial()}
