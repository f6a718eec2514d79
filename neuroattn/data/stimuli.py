"""The offline stimulus set: augmented bundled photos plus procedural scenes, with descriptions and tags."""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuroattn.data.scene_generator import random_scene, render_scene
from neuroattn.errors import ConfigError, InvalidInputError
from neuroattn.io.atomic import atomic_path, atomic_write_text
from neuroattn.progress import progress_bar

STIMULI_HDF5 = "stimuli.hdf5"
STIMULI_CSV = "stimuli.csv"
IMAGE_DATASET = "imgBrick"  # NSD's dataset name inside nsd_stimuli.hdf5

# Bundled photos that load without network: (loader, name) -> (phrase, concept tags)
PHOTOS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("skimage", "astronaut"): ("an astronaut, a person in a space suit", ("person", "astronaut")),
    ("skimage", "coffee"): ("a cup of coffee", ("cup", "coffee")),
    ("skimage", "chelsea"): ("a cat, an animal", ("cat", "animal")),
    ("skimage", "rocket"): ("a rocket against the sky", ("rocket", "sky")),
    ("skimage", "camera"): ("a person with a camera", ("person", "camera", "greyscale")),
    ("skimage", "coins"): ("coins", ("coins", "greyscale")),
    ("skimage", "horse"): ("a horse silhouette, an animal", ("horse", "animal", "greyscale")),
    ("skimage", "moon"): ("the moon's surface in space", ("moon", "space", "greyscale")),
    ("skimage", "brick"): ("a brick wall texture", ("brick", "texture", "greyscale")),
    ("skimage", "grass"): ("a grass texture", ("grass", "texture", "greyscale")),
    ("skimage", "gravel"): ("a gravel texture", ("gravel", "texture", "greyscale")),
    ("skimage", "hubble_deep_field"): ("distant galaxies in space", ("galaxies", "space")),
    ("skimage", "immunohistochemistry"): ("stained tissue cells in microscopy", ("cells", "microscopy")),
    ("skimage", "retina"): ("the retina of an eye", ("eye", "retina")),
    ("skimage", "clock"): ("a clock", ("clock", "greyscale")),
    ("skimage", "cell"): ("cells in microscopy", ("cells", "microscopy", "greyscale")),
    ("sklearn", "china"): ("a temple building", ("building", "temple")),
    ("sklearn", "flower"): ("a flower, a plant", ("flower", "plant")),
}
COLOUR_SHIFTS = {  # name -> per-channel RGB gain
    "warmer": (1.15, 1.0, 0.85),
    "cooler": (0.85, 1.0, 1.15),
    "darker": (0.7, 0.7, 0.7),
    "brighter": (1.25, 1.25, 1.25),
}
MIN_CROP_FRACTION = 0.35  # smallest crop side as a fraction of the photo's shorter side


@dataclass
class StimulusSet:
    """Images with their true descriptions, sources and concept tags.

    ``images`` uint8 (N, H, W, 3); ``descriptions``, ``sources`` and ``concepts`` have N entries each
    (``sources`` like ``"scene"`` or ``"skimage:chelsea"``; ``concepts`` tuples of tags).
    """

    images: np.ndarray
    descriptions: list[str]
    sources: list[str]
    concepts: list[tuple[str, ...]]

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.descriptions) == len(self.sources) == len(self.concepts) == n):
            raise InvalidInputError(
                f"stimulus set lengths differ: {n} images, {len(self.descriptions)} descriptions, "
                f"{len(self.sources)} sources, {len(self.concepts)} concept lists"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def concept_vocabulary(self) -> list[str]:
        """Every tag in order of first appearance."""
        return list(dict.fromkeys(tag for tags in self.concepts for tag in tags))

    def concept_matrix(self, vocabulary: list[str] | None = None) -> np.ndarray:
        """Bool (N, K): image n carries tag k of ``vocabulary`` (default :meth:`concept_vocabulary`)."""
        vocabulary = self.concept_vocabulary() if vocabulary is None else vocabulary
        index = {tag: k for k, tag in enumerate(vocabulary)}
        out = np.zeros((len(self), len(vocabulary)), dtype=bool)
        for n, tags in enumerate(self.concepts):
            for tag in tags:
                if tag in index:
                    out[n, index[tag]] = True
        return out

    def subset(self, index: np.ndarray) -> StimulusSet:
        idx = np.arange(len(self))[index]
        return StimulusSet(
            images=self.images[idx],
            descriptions=[self.descriptions[i] for i in idx],
            sources=[self.sources[i] for i in idx],
            concepts=[self.concepts[i] for i in idx],
        )


@functools.lru_cache(maxsize=1)
def _photo_sources() -> tuple[np.ndarray, ...]:
    """Every bundled photo as uint8 RGB (H, W, 3), in :data:`PHOTOS` order."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    samples = dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    out = []
    for loader, name in PHOTOS:
        img = samples[name] if loader == "sklearn" else getattr(skimage.data, name)()
        img = np.asarray(img)
        if img.dtype == bool:
            img = np.where(img, 230, 25).astype(np.uint8)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(img[..., :3].astype(np.uint8)))
    return tuple(out)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize (PIL) of uint8 (N, H, W, 3) to (N, size, size, 3)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = np.zeros((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size, size), Image.BILINEAR))
    return out


def _photo_crop(rng: np.random.Generator, size: int) -> tuple[np.ndarray, str, str, tuple[str, ...]]:
    """One randomly cropped, maybe flipped, maybe colour-shifted photo with its description and tags."""
    photos = _photo_sources()
    k = int(rng.integers(len(photos)))
    (loader, name), (phrase, tags) = list(PHOTOS.items())[k]
    img = photos[k]
    h, w = img.shape[:2]
    side = round(min(h, w) * rng.uniform(MIN_CROP_FRACTION, 1.0))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = img[top : top + side, left : left + side]
    notes = []
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
        notes.append("flipped")
    shift = str(rng.choice([*COLOUR_SHIFTS, "none", "none"]))
    crop = resize_images(crop[None], size)[0].astype(np.float32)
    if shift != "none":
        crop = crop * np.array(COLOUR_SHIFTS[shift], dtype=np.float32)
        notes.append(f"{shift} colours")
    image = np.clip(np.round(crop), 0, 255).astype(np.uint8)
    grey = "greyscale " if "greyscale" in tags else ""
    description = f"a crop of a {grey}photo of {phrase}" + (", " + ", ".join(notes) if notes else "")
    return image, description, f"{loader}:{name}", (*tags, "photo")


def build_stimulus_set(
    n_images: int = 1200, image_size: int = 64, seed: int = 0, progress: bool = False
) -> StimulusSet:
    """Roughly half augmented bundled photos, half procedural scenes, shuffled; deterministic by ``seed``.

    Parameters
    ----------
    n_images : int
        Number of images N.
    image_size : int
        Side (px) of the square images.
    seed : int
        Seed of every random choice.

    Returns
    -------
    StimulusSet
        ``images`` uint8 (N, image_size, image_size, 3) with descriptions, sources and concept tags.
    """
    if n_images < 1:
        raise ConfigError(f"'n_images' must be at least 1. {n_images} was provided.")
    if image_size < 16:
        raise ConfigError(f"'image_size' must be at least 16 px. {image_size} was provided.")
    rng = np.random.default_rng(seed)
    is_photo = rng.permutation(np.arange(n_images) < n_images // 2)
    images = np.zeros((n_images, image_size, image_size, 3), dtype=np.uint8)
    descriptions, sources, concepts = [], [], []
    for i in progress_bar(range(n_images), desc="stimuli", unit="image", disable=not progress):
        if is_photo[i]:
            image, description, source, tags = _photo_crop(rng, image_size)
        else:
            scene = random_scene(rng)
            image, description, source, tags = (
                render_scene(scene, image_size, rng),
                scene.description(),
                "scene",
                scene.concepts(),
            )
        images[i] = image
        descriptions.append(description)
        sources.append(source)
        concepts.append(tuple(tags))
    return StimulusSet(images=images, descriptions=descriptions, sources=sources, concepts=concepts)


def save_stimuli(stimuli: StimulusSet, root: str | Path) -> Path:
    """Write ``root/stimuli.hdf5`` (dataset ``imgBrick``, uint8 (N, H, W, 3)) and ``root/stimuli.csv``."""
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / STIMULI_HDF5) as tmp, h5py.File(tmp, "w") as fh:
        fh.create_dataset(IMAGE_DATASET, data=stimuli.images, compression="gzip", compression_opts=4)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "description", "source", "concepts"])
    for i in range(len(stimuli)):
        writer.writerow([i, stimuli.descriptions[i], stimuli.sources[i], "|".join(stimuli.concepts[i])])
    atomic_write_text(root / STIMULI_CSV, buf.getvalue())
    return root


def load_stimuli(root: str | Path, image_size: int | None = None) -> StimulusSet:
    """Read the stimulus set :func:`save_stimuli` wrote; resize images when ``image_size`` differs."""
    import h5py

    root = Path(root)
    h5_path, csv_path = root / STIMULI_HDF5, root / STIMULI_CSV
    for path in (h5_path, csv_path):
        if not path.is_file():
            raise InvalidInputError("file not found", path)
    try:
        with h5py.File(h5_path, "r") as fh:
            if IMAGE_DATASET not in fh:
                raise InvalidInputError(f"no '{IMAGE_DATASET}' dataset", h5_path)
            images = np.asarray(fh[IMAGE_DATASET][...], dtype=np.uint8)
    except OSError as err:
        raise InvalidInputError(f"unreadable HDF5 file ({err})", h5_path) from None
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InvalidInputError(f"'{IMAGE_DATASET}' has shape {images.shape}, expected (N, H, W, 3)", h5_path)
    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if [int(r["image_id"]) for r in rows] != list(range(len(images))):
        raise InvalidInputError(f"image_id column must be 0..{len(images) - 1} in order, matching the HDF5", csv_path)
    if image_size is not None:
        images = resize_images(images, image_size)
    return StimulusSet(
        images=images,
        descriptions=[r["description"] for r in rows],
        sources=[r["source"] for r in rows],
        concepts=[tuple(t for t in r["concepts"].split("|") if t) for r in rows],
    )
