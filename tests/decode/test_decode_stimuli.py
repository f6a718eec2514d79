"""Stimulus set: size, determinism, descriptions true to the pixels, save/load round trip."""

from __future__ import annotations

import re

import numpy as np
import pytest

from neuroattn.data.scene_generator import COLOURS, POSITIONS, STRIPE_DARKEN
from neuroattn.data.stimuli import build_stimulus_set, load_stimuli, save_stimuli

PHRASE = re.compile(
    r"a (small|large) (\w+)( striped)? (circle|square|triangle|star|ring) "
    r"(on the left|on the right|at the top|at the bottom|in the centre)"
)
PLACE = {
    "on the left": "left",
    "on the right": "right",
    "at the top": "top",
    "at the bottom": "bottom",
    "in the centre": "centre",
}


@pytest.fixture(scope="module")
def big_set():
    return build_stimulus_set(n_images=1000, image_size=64, seed=0)


def _near(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Bool (H, W): pixels within 12 grey levels of ``colour`` on every channel."""
    return (np.abs(image.astype(int) - colour.astype(int)) <= 12).all(axis=-1)


def _cell(position: str, size: int, half_fraction: float = 0.18) -> tuple[slice, slice]:
    cy, cx = (int(f * size) for f in POSITIONS[position])
    half = int(half_fraction * size)
    return slice(cy - half, cy + half), slice(cx - half, cx + half)


def test_size_mix_and_fields(big_set):
    assert len(big_set) >= 1000
    assert big_set.images.shape == (1000, 64, 64, 3) and big_set.images.dtype == np.uint8
    scenes = np.array([s == "scene" for s in big_set.sources])
    assert 0.45 < scenes.mean() < 0.55
    assert all(d for d in big_set.descriptions)
    photo_tags = {t for s, tags in zip(big_set.sources, big_set.concepts, strict=True) if s != "scene" for t in tags}
    assert {"cat", "photo", "flower", "astronaut"} <= photo_tags
    # photos differ from each other (random crops), not 18 repeated sources
    photos = big_set.images[~scenes].reshape(int((~scenes).sum()), -1)
    assert len(np.unique(photos, axis=0)) == len(photos)


def test_deterministic_by_seed():
    a = build_stimulus_set(n_images=40, seed=3)
    b = build_stimulus_set(n_images=40, seed=3)
    c = build_stimulus_set(n_images=40, seed=4)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.descriptions == b.descriptions and a.concepts == b.concepts
    assert not np.array_equal(a.images, c.images)


def test_scene_descriptions_match_pixels(big_set):
    checked = 0
    for image, text, source, tags in zip(
        big_set.images, big_set.descriptions, big_set.sources, big_set.concepts, strict=True
    ):
        if source != "scene":
            continue
        phrases = PHRASE.findall(text)
        assert 1 <= len(phrases) <= 3, text
        mentioned = set()
        for _size, colour, striped, shape, place in phrases:
            position = PLACE[place]
            assert colour in tags and shape in tags and position in tags
            mentioned.add(colour)
            rgb = np.array(COLOURS[colour])
            cell = image[_cell(position, 64)]
            share = _near(cell, rgb).mean()
            assert share > 0.04, (text, colour, position, share)
            if striped:
                assert _near(cell, np.round(rgb * STRIPE_DARKEN)).mean() > 0.02, text
            checked += 1
        for colour, rgb in COLOURS.items():
            if colour not in mentioned:
                assert _near(image, np.array(rgb)).mean() == 0.0, (text, colour)
        # no shape where none is said to be: the core of an unmentioned place holds no saturated colour
        for position in POSITIONS:
            if position not in tags:
                cell = image[_cell(position, 64, half_fraction=0.08)].astype(int)
                assert (cell.max(axis=-1) - cell.min(axis=-1)).max() < 40, (text, position)
    assert checked > 500


def test_save_load_round_trip(tmp_path):
    stim = build_stimulus_set(n_images=24, seed=1)
    save_stimuli(stim, tmp_path)
    loaded = load_stimuli(tmp_path)
    np.testing.assert_array_equal(loaded.images, stim.images)
    assert loaded.descriptions == stim.descriptions
    assert loaded.sources == stim.sources
    assert loaded.concepts == stim.concepts
    small = load_stimuli(tmp_path, image_size=32)
    assert small.images.shape == (24, 32, 32, 3)
    # resizing keeps the picture: the 32 px version tracks the block-averaged original
    pooled = stim.images.reshape(24, 32, 2, 32, 2, 3).mean(axis=(2, 4))
    assert np.abs(small.images.astype(float) - pooled).mean() < 8


def test_every_concept_tag_is_named_in_its_description(big_set):
    """Captions are the stimulus set's own descriptions offline, so a tag a voxel prefers must be sayable."""
    for text, tags in zip(big_set.descriptions, big_set.concepts, strict=True):
        words = set(re.findall(r"[a-z]+", text.lower()))
        assert set(tags) <= words, (text, set(tags) - words)
