"""Encoding data: a decoding data folder's stimuli, their embeddings and each subject's repeat-averaged responses.

Encoders read the same NSD-like folder the decoders do (``neuroattn decode simulate`` or real NSD). Planted
truth (noise ceiling, concept-selective voxels) comes with simulated folders and is None for real data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuroattn.data.stimuli import StimulusSet
from neuroattn.decode.clip_features import ClipEncoder, load_clip
from neuroattn.decode.data_bundle import DecodingData, FeatureSource, open_decoding_data
from neuroattn.encode.features import EncodingFeatures, encoding_features
from neuroattn.errors import InvalidInputError


@dataclass
class EncodingSubject:
    """One subject's repeat-averaged, z-scored responses (V voxels) to its train and test images.

    ``noise_ceiling`` (V,) is the percent of response variance explainable in repeat-averaged responses (planted
    truth for simulated data, estimated from repeats otherwise); ``concept`` (V,) the planted concept index into
    :attr:`EncodingData.concepts` (-1 none), None for real data.
    """

    name: str
    train_ids: np.ndarray
    train_responses: np.ndarray
    test_ids: np.ndarray
    test_responses: np.ndarray
    roi: np.ndarray
    roi_names: dict[int, str]
    voxel_ijk: np.ndarray
    affine: np.ndarray
    mask_shape: tuple[int, int, int]
    noise_ceiling: np.ndarray | None = None
    concept: np.ndarray | None = None

    @property
    def n_voxels(self) -> int:
        return int(self.train_responses.shape[1])

    def voxels_in(self, rois: list[str] | None) -> np.ndarray:
        """Indices of the voxels in the named ROIs (all voxels when None)."""
        if not rois:
            return np.arange(self.n_voxels)
        codes = [c for c, n in self.roi_names.items() if n in rois]
        missing = sorted(set(rois) - set(self.roi_names.values()))
        if missing:
            raise InvalidInputError(f"unknown ROI(s) {missing}; known: {sorted(self.roi_names.values())}")
        return np.flatnonzero(np.isin(self.roi, codes))


@dataclass
class EncodingData:
    """Stimuli, their encoding embeddings, and the subjects of one data folder."""

    decoding: DecodingData
    features: EncodingFeatures
    _subjects: dict[str, EncodingSubject] = field(default_factory=dict, repr=False)
    _clip: ClipEncoder | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        return self.decoding.root

    @property
    def stimuli(self) -> StimulusSet:
        return self.decoding.stimuli

    @property
    def subject_names(self) -> list[str]:
        return self.decoding.subject_names

    @property
    def clip_trained(self) -> bool:
        return self.decoding.clip_trained

    @property
    def concepts(self) -> list[str] | None:
        """The planted concept vocabulary of simulated data (None for real data)."""
        sim = self.decoding.simulation()
        return None if sim is None else list(sim.get("concepts", []))

    @property
    def clip(self) -> ClipEncoder:
        """The CLIP model the features came from (loaded on first use), for text queries."""
        if self._clip is None:
            src = self.decoding.source
            self._clip = load_clip(src.clip_weights, model_name=src.clip_model,
                                   image_size=self.stimuli.image_size, seed=src.seed)
        return self._clip

    def text_features(self, texts: list[str]) -> np.ndarray:
        """Text queries (M,) -> (M, D) in the encoders' embedding space."""
        return self.features.text_features(self.clip.encode_text(list(texts)))

    def subject(self, name: str) -> EncodingSubject:
        """One subject's repeat-averaged responses with planted truth when present (loaded once)."""
        if name not in self._subjects:
            self._subjects[name] = _encoding_subject(self.decoding, name)
        return self._subjects[name]

    def summary(self) -> dict[str, Any]:
        return {"root": str(self.root), "n_images": len(self.stimuli), "subjects": self.subject_names,
                "features": self.features.info, "clip_trained": self.clip_trained}


def _encoding_subject(data: DecodingData, name: str) -> EncodingSubject:
    subject = data.subject(name)
    train, train_ids = subject.averaged(test=False)
    test, test_ids = subject.averaged(test=True)
    ceiling, concept = None, None
    truth_path = data.root / name / "truth.npz"
    if truth_path.is_file():
        with np.load(truth_path, allow_pickle=False) as npz:
            ceiling, concept = npz["noise_ceiling"].astype(np.float64), npz["concept"].astype(np.int64)
    else:
        from neuroattn.decode.noise_ceiling import noise_ceiling

        betas, ids = subject.trials(test=True)
        repeats = np.bincount(ids)[np.unique(ids)] if len(ids) else np.zeros(0)
        if len(repeats) and repeats.max() >= 2:
            ceiling = noise_ceiling(betas, ids, n_average=float(np.median(repeats)))
    return EncodingSubject(
        name=name, train_ids=train_ids, train_responses=train, test_ids=test_ids, test_responses=test,
        roi=subject.roi, roi_names=dict(subject.roi_names), voxel_ijk=subject.voxel_ijk, affine=subject.affine,
        mask_shape=subject.mask_shape, noise_ceiling=ceiling, concept=concept,
    )


def open_encoding_data(
    root: str | Path,
    source: FeatureSource | None = None,
    *,
    kind: str = "clip-grid+lowlevel",
    n_clip: int = 64,
    n_lowlevel: int = 32,
    device: str = "cpu",
    progress: bool = False,
) -> EncodingData:
    """Open a decoding data folder for encoding: CLIP features (cached) -> whitened embeddings of every stimulus."""
    decoding = open_decoding_data(root, source, device=device, progress=progress)
    features = encoding_features(decoding.features, decoding.stimuli.images, kind=kind, n_clip=n_clip,
                                 n_lowlevel=n_lowlevel)
    features.info["clip_trained"] = decoding.clip_trained
    return EncodingData(decoding=decoding, features=features)
