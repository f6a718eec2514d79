"""Subject data for decoding: our NSD-like layout and the real Natural Scenes Dataset release tree."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuroattn.errors import InvalidInputError
from neuroattn.io.nifti import load_volume

ROI_NAMES: dict[int, str] = {1: "V1", 2: "V2", 3: "V3", 4: "V4", 5: "higher"}
NSD_TRIALS_PER_SESSION = 750
NSD_BETA_SCALE = 300.0  # NSD stores betas as int16 percent signal change times 300
SUBJECT_PATTERN = re.compile(r"^subj\d{2}$")


@dataclass
class SubjectData:
    """One subject's single-trial responses on a voxel set.

    ``betas`` float32 (n_trials, V); ``image_ids`` int64 (n_trials,); ``is_test`` bool (n_trials,);
    ``voxel_ijk`` int (V, 3) voxel indices into a grid of ``mask_shape`` mapped to mm by ``affine`` (4, 4);
    ``roi`` int16 (V,) ROI code of each voxel with names in ``roi_names`` (0 = unlabelled).
    """

    subject: str
    betas: np.ndarray
    image_ids: np.ndarray
    is_test: np.ndarray
    voxel_ijk: np.ndarray
    affine: np.ndarray
    mask_shape: tuple[int, int, int]
    roi: np.ndarray
    roi_names: dict[int, str]

    @property
    def n_voxels(self) -> int:
        return int(self.betas.shape[1])

    @property
    def n_trials(self) -> int:
        return int(self.betas.shape[0])

    def trials(self, test: bool) -> tuple[np.ndarray, np.ndarray]:
        """Single trials of one split: betas (n, V) and image ids (n,)."""
        keep = self.is_test == bool(test)
        return self.betas[keep], self.image_ids[keep]

    def averaged(self, test: bool, keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Repeat-averaged betas (n_images, V) of one split and their image ids (n_images,), ids sorted.

        ``keep`` (bool, one per trial of the split) averages only those trials.
        """
        betas, ids = self.trials(test)
        if keep is not None:
            betas, ids = betas[keep], ids[keep]
        unique, inverse = np.unique(ids, return_inverse=True)
        sums = np.zeros((len(unique), betas.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, betas)
        counts = np.bincount(inverse, minlength=len(unique))
        return (sums / counts[:, None]).astype(np.float32), unique.astype(np.int64)

    def voxel_mm(self) -> np.ndarray:
        """Millimetre coordinates (V, 3) of the voxels."""
        return self.voxel_ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def mask(self) -> np.ndarray:
        """Bool volume of ``mask_shape`` with the subject's voxels set."""
        out = np.zeros(self.mask_shape, dtype=bool)
        out[tuple(self.voxel_ijk.T)] = True
        return out


def zscore_by_training(betas: np.ndarray, is_test: np.ndarray) -> np.ndarray:
    """Z-score every voxel with the mean and sd of its training trials (MindEye normalisation), float32."""
    train = betas[~is_test].astype(np.float64)
    mean = train.mean(axis=0)
    sd = train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return ((betas - mean) / sd).astype(np.float32)


def list_subjects(root: str | Path) -> list[str]:
    """Subject folders (``subjNN``) of an NSD-like layout, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError("folder not found", root)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and SUBJECT_PATTERN.match(p.name))


def _read_trials(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    try:
        order = [int(r["trial"]) for r in rows]
        image_ids = np.array([int(r["image_id"]) for r in rows], dtype=np.int64)
        split = [r["split"] for r in rows]
    except (KeyError, ValueError) as err:
        raise InvalidInputError(f"needs integer trial/image_id columns and a split column ({err})", path) from None
    if order != list(range(len(rows))):
        raise InvalidInputError("trial column must count 0, 1, 2, ... in order", path)
    bad = sorted(set(split) - {"train", "test"})
    if bad:
        raise InvalidInputError(f"split must be 'train' or 'test', found {bad}", path)
    return image_ids, np.array([s == "test" for s in split])


def load_subject(root: str | Path, subject: str, zscore: bool = True) -> SubjectData:
    """Load ``root/<subject>`` of the NSD-like layout :func:`save_simulated_nsd` writes.

    Betas come from ``betas.nii.gz`` (X, Y, Z, n_trials) at the voxels of ``nsdgeneral.nii.gz`` (value 1),
    in C order of their indices; ``zscore`` normalises each voxel by its training trials.
    """
    folder = Path(root) / subject
    if not folder.is_dir():
        raise InvalidInputError("subject folder not found", folder)
    mask_vol = load_volume(folder / "nsdgeneral.nii.gz", ndim=3)
    mask = mask_vol.data > 0.5
    roi_vol = load_volume(folder / "roi.nii.gz", ndim=3)
    betas_vol = load_volume(folder / "betas.nii.gz", ndim=4)
    if betas_vol.shape[:3] != mask.shape or roi_vol.shape != mask.shape:
        raise InvalidInputError(
            f"grid {betas_vol.shape[:3]} differs from nsdgeneral.nii.gz {mask.shape} or roi.nii.gz {roi_vol.shape}",
            folder / "betas.nii.gz",
        )
    image_ids, is_test = _read_trials(folder / "trials.csv")
    if betas_vol.shape[3] != len(image_ids):
        raise InvalidInputError(
            f"{betas_vol.shape[3]} volumes but trials.csv lists {len(image_ids)} trials", folder / "betas.nii.gz"
        )
    ijk = np.argwhere(mask)  # (V, 3), C order
    betas = np.ascontiguousarray(betas_vol.data[mask].T, dtype=np.float32)  # (n_trials, V)
    if zscore:
        betas = zscore_by_training(betas, is_test)
    roi = np.rint(roi_vol.data[mask]).astype(np.int16)
    return SubjectData(
        subject=subject,
        betas=betas,
        image_ids=image_ids,
        is_test=is_test,
        voxel_ijk=ijk,
        affine=np.asarray(mask_vol.affine, dtype=float),
        mask_shape=tuple(int(s) for s in mask.shape),
        roi=roi,
        roi_names=dict(ROI_NAMES),
    )


def _nsd_expdesign(nsd_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """masterordering (30000,), subjectim (8, 10000) and sharedix (1000,), all 1-based as in the .mat file."""
    from scipy.io import loadmat

    path = nsd_root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    try:
        mat = loadmat(str(path))
    except (ValueError, OSError, NotImplementedError) as err:
        raise InvalidInputError(f"unreadable MATLAB file ({err})", path) from None
    missing = [k for k in ("masterordering", "subjectim", "sharedix") if k not in mat]
    if missing:
        raise InvalidInputError(f"missing variables {missing}", path)
    return (
        np.asarray(mat["masterordering"]).ravel().astype(np.int64),
        np.atleast_2d(np.asarray(mat["subjectim"])).astype(np.int64),
        np.asarray(mat["sharedix"]).ravel().astype(np.int64),
    )


def _load_int_volume(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise InvalidInputError("file not found", path)
    try:
        return nib.load(str(path))
    except Exception as err:  # nibabel raises many types for damaged files
        raise InvalidInputError(f"unreadable NIfTI file ({err})", path) from None


def load_nsd_subject(
    nsd_root: str | Path,
    subject: int,
    sessions: list[int] | None = None,
    resolution: str = "func1pt8mm",
    zscore: bool = True,
) -> SubjectData:
    """Load one subject of the real NSD release on its nsdgeneral voxels.

    Reads ``nsddata/experiments/nsd/nsd_expdesign.mat`` (masterordering, subjectim, sharedix),
    ``nsddata/ppdata/subjXX/<resolution>/roi/nsdgeneral.nii.gz`` (1 = inside) and
    ``nsddata_betas/ppdata/subjXX/<resolution>/betas_fithrf_GLMdenoise_RR/betas_sessionNN.nii.gz``
    (int16, divided by 300). Image ids are 0-based NSD (73k) ids; shared1000 images form the test split.
    Voxels are in the files' own voxel order (C order of their indices), ``affine`` the files' affine.

    Parameters
    ----------
    nsd_root : path
        Root of the NSD tree.
    subject : int
        1..8.
    sessions : list of int or None
        1-based session numbers; default every ``betas_sessionNN.nii.gz`` present.
    """
    root = Path(nsd_root)
    masterordering, subjectim, sharedix = _nsd_expdesign(root)
    if not 1 <= subject <= subjectim.shape[0]:
        raise InvalidInputError(f"subject must be 1..{subjectim.shape[0]}, got {subject}")
    name = f"subj{subject:02d}"
    mask_path = root / "nsddata" / "ppdata" / name / resolution / "roi" / "nsdgeneral.nii.gz"
    mask_img = _load_int_volume(mask_path)
    mask = np.asarray(mask_img.dataobj) == 1
    if mask.ndim != 3 or not mask.any():
        raise InvalidInputError(f"expected a 3-D mask with some voxels equal to 1, got shape {mask.shape}", mask_path)
    beta_dir = root / "nsddata_betas" / "ppdata" / name / resolution / "betas_fithrf_GLMdenoise_RR"
    if sessions is None:
        sessions = sorted(int(p.name[13:15]) for p in beta_dir.glob("betas_session[0-9][0-9].nii.gz"))
        if not sessions:
            raise InvalidInputError("no betas_sessionNN.nii.gz files", beta_dir)
    chunks, ids = [], []
    for session in sessions:
        path = beta_dir / f"betas_session{session:02d}.nii.gz"
        img = _load_int_volume(path)
        if img.ndim != 4 or img.shape[:3] != mask.shape:
            raise InvalidInputError(f"betas shape {img.shape} does not match nsdgeneral mask {mask.shape}", path)
        if not np.allclose(img.affine, mask_img.affine, atol=1e-3):
            raise InvalidInputError("affine differs from the nsdgeneral mask's", path)
        start = (session - 1) * NSD_TRIALS_PER_SESSION
        order = masterordering[start : start + img.shape[3]]
        if len(order) != img.shape[3]:
            raise InvalidInputError(f"{img.shape[3]} trials exceed the experiment design's {len(masterordering)}", path)
        data = np.asarray(img.dataobj)[mask]  # (V, n_session_trials), raw int16 values
        values = data.T.astype(np.float32) / NSD_BETA_SCALE  # (n_session_trials, V)
        if not np.all(np.isfinite(values)):
            raise InvalidInputError("betas contain NaN or infinite values inside nsdgeneral", path)
        chunks.append(values)
        ids.append(subjectim[subject - 1, order - 1] - 1)
    betas = np.concatenate(chunks)
    image_ids = np.concatenate(ids).astype(np.int64)
    is_test = np.isin(image_ids, sharedix - 1)
    if zscore:
        betas = zscore_by_training(betas, is_test)
    return SubjectData(
        subject=name,
        betas=betas,
        image_ids=image_ids,
        is_test=is_test,
        voxel_ijk=np.argwhere(mask),
        affine=np.asarray(mask_img.affine, dtype=float),
        mask_shape=tuple(int(s) for s in mask.shape),
        roi=np.zeros(int(mask.sum()), dtype=np.int16),
        roi_names={0: "nsdgeneral"},
    )


def load_nsd_images(nsd_root: str | Path, image_ids: np.ndarray, image_size: int = 64) -> np.ndarray:
    """uint8 images (N, image_size, image_size, 3) of 0-based NSD ids from ``nsd_stimuli.hdf5`` ("imgBrick")."""
    import h5py

    from neuroattn.data.stimuli import IMAGE_DATASET, resize_images

    path = Path(nsd_root) / "nsddata_stimuli" / "stimuli" / "nsd" / "nsd_stimuli.hdf5"
    if not path.is_file():
        raise InvalidInputError("file not found", path)
    ids = np.asarray(image_ids, dtype=np.int64)
    order = np.argsort(ids)
    with h5py.File(path, "r") as fh:
        if IMAGE_DATASET not in fh:
            raise InvalidInputError(f"no '{IMAGE_DATASET}' dataset", path)
        brick = fh[IMAGE_DATASET]
        if ids.size and (ids.min() < 0 or ids.max() >= brick.shape[0]):
            raise InvalidInputError(f"image ids outside 0..{brick.shape[0] - 1}", path)
        unique, inverse = np.unique(ids[order], return_inverse=True)
        chunks = [  # h5py reads sorted index lists; chunks keep memory bounded for 425 px images
            resize_images(np.asarray(brick[unique[i : i + 256]]), image_size) for i in range(0, len(unique), 256)
        ]
    images = np.concatenate(chunks)[inverse] if chunks else np.zeros((0, image_size, image_size, 3), np.uint8)
    out = np.empty_like(images)
    out[order] = images
    return out
