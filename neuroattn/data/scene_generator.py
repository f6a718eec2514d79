"""Procedural scenes of 1-3 coloured shapes on textured backgrounds, each with a true description and tags."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 40),
    "blue": (35, 60, 230),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 200),
    "orange": (250, 140, 0),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (235, 235, 235),
    "black": (20, 20, 20),
}
TEXTURES = ("plain", "stripes", "checker", "dots")
POSITIONS: dict[str, tuple[float, float]] = {  # (row, column) of the shape centre as a fraction of the image side
    "left": (0.5, 0.22),
    "right": (0.5, 0.78),
    "top": (0.22, 0.5),
    "bottom": (0.78, 0.5),
    "centre": (0.5, 0.5),
}
POSITION_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
SIZES = {"small": 0.1, "large": 0.16}  # shape radius as a fraction of the image side
TEXTURE_CONTRAST = 25  # grey levels added/removed by a background texture
STRIPE_DARKEN = 0.55  # factor on the colour of the dark stripes of a striped shape


@dataclass(frozen=True)
class SceneShape:
    """One shape of a scene: what, what colour, where, how big, striped or plain."""

    shape: str
    colour: str
    position: str
    size: str
    striped: bool

    def phrase(self) -> str:
        stripe = " striped" if self.striped else ""
        return f"a {self.size} {self.colour}{stripe} {self.shape} {POSITION_PHRASE[self.position]}"


@dataclass(frozen=True)
class Scene:
    """Attributes of a procedural scene; :func:`render_scene` draws it and :meth:`description` says it."""

    shapes: tuple[SceneShape, ...]
    background: str
    texture: str

    def description(self) -> str:
        parts = [s.phrase() for s in self.shapes]
        joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        background = f"plain {self.background}" if self.texture == "plain" else f"{self.background} {self.texture}"
        return f"a scene of {joined}, on a {background} background"

    def concepts(self) -> tuple[str, ...]:
        tags: list[str] = []
        for s in self.shapes:
            tags += [s.colour, s.shape, s.position] + (["striped"] if s.striped else [])
        tags += [self.background, self.texture, "scene"]
        return tuple(dict.fromkeys(tags))


def random_scene(rng: np.random.Generator) -> Scene:
    """Draw 1-3 shapes at distinct positions (centre only for a single shape, so shapes never overlap)."""
    n = int(rng.integers(1, 4))
    places = list(POSITIONS) if n == 1 else [p for p in POSITIONS if p != "centre"]
    chosen = rng.choice(len(places), size=n, replace=False)
    shapes = tuple(
        SceneShape(
            shape=str(rng.choice(SHAPES)),
            colour=str(rng.choice(list(COLOURS))),
            position=places[int(k)],
            size=str(rng.choice(list(SIZES))),
            striped=bool(rng.random() < 0.3),
        )
        for k in chosen
    )
    return Scene(shapes=shapes, background=str(rng.choice(list(BACKGROUNDS))), texture=str(rng.choice(TEXTURES)))


def _star_polygon(cy: float, cx: float, r: float) -> tuple[np.ndarray, np.ndarray]:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return cy + radii * np.sin(angles), cx + radii * np.cos(angles)


def shape_mask(shape: SceneShape, size: int) -> np.ndarray:
    """Boolean (size, size) mask of the pixels a shape covers."""
    from skimage.draw import polygon

    cy, cx = (f * size for f in POSITIONS[shape.position])
    r = SIZES[shape.size] * size
    rows, cols = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    dist = np.hypot(rows - cy, cols - cx)
    if shape.shape == "circle":
        return dist <= r
    if shape.shape == "ring":
        return (dist <= r) & (dist >= 0.55 * r)
    if shape.shape == "square":
        half = 0.85 * r
        return (np.abs(rows - cy) <= half) & (np.abs(cols - cx) <= half)
    if shape.shape == "triangle":
        pr = cy + r * np.array([-1.0, 0.75, 0.75])
        pc = cx + r * np.array([0.0, -1.0, 1.0])
    else:
        pr, pc = _star_polygon(cy, cx, r)
    mask = np.zeros((size, size), dtype=bool)
    rr, cc = polygon(pr, pc, shape=(size, size))
    mask[rr, cc] = True
    return mask


def _background(background: str, texture: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) float background: a grey level, modulated by a texture of random period and phase."""
    base = np.array(BACKGROUNDS[background], dtype=np.float32)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    period = float(rng.uniform(6, 12))  # px
    phase = float(rng.uniform(0, period))
    if texture == "stripes":
        pattern = np.where(((cols + rows * rng.choice([0.0, 1.0]) + phase) // (period / 2)) % 2 == 0, 1.0, -1.0)
    elif texture == "checker":
        pattern = np.where(((rows + phase) // (period / 2) + (cols + phase) // (period / 2)) % 2 == 0, 1.0, -1.0)
    elif texture == "dots":
        d = np.hypot((rows + phase) % period - period / 2, (cols + phase) % period - period / 2)
        pattern = np.where(d < period / 5, 1.0, 0.0)
    else:
        pattern = np.zeros((size, size), dtype=np.float32)
    sign = -1.0 if background == "white" else 1.0  # keep textures inside [0, 255] on white
    return base[None, None, :] + sign * TEXTURE_CONTRAST * pattern[..., None]


def render_scene(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size, 3) image of ``scene``; ``rng`` only picks texture period/phase and stripe phase."""
    image = _background(scene.background, scene.texture, size, rng)
    cols = np.arange(size)[None, :] + np.zeros((size, 1))
    for s in scene.shapes:
        mask = shape_mask(s, size)
        colour = np.array(COLOURS[s.colour], dtype=np.float32)
        image[mask] = colour
        if s.striped:
            period = max(size // 16, 2)  # px per stripe
            dark = mask & ((cols // period) % 2 == 1)
            image[dark] = colour * STRIPE_DARKEN
    return np.clip(np.round(image), 0, 255).astype(np.uint8)
