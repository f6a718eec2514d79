"""Shared pieces of the app tests: where the app lives, the test workspace and how to make one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neuroattn.data.synth_mri import SynthMRIConfig, synthesize_mri_cohort
from neuroattn.harmonize.pipeline import train_harmonizer
from neuroattn.io.manifest import load_manifest

APP_DIR = Path(__file__).resolve().parents[2] / "app"
TINY_SA_CYCLEGAN = dict(base_channels=8, n_res_blocks=3, disc_layers=2, max_steps=2, batch_size=2, crop_size=None,
                        warmup_steps=1, device="cpu", seed=0)


@dataclass(frozen=True)
class AppWorkspace:
    root: Path
    cohort: Path  # folder holding manifest.csv (T1w only, 2 subjects x 2 sites, 6 mm)
    nyul: Path  # run folder of a fitted Nyúl harmonizer
    sa_cyclegan: Path  # run folder of a 2-step SA-CycleGAN-2.5D

    def scan(self, site: str = "siteB", subject: str = "sub-000") -> Path:
        manifest = load_manifest(self.cohort / "manifest.csv")
        return manifest.rows_for(site=site, subject=subject)[0].path




def make_workspace(root: Path) -> AppWorkspace:
    """A tiny two-site cohort (T1w, 6 mm) and two harmonizers fitted on it, under ``root``."""
    cohort = root / "cohort"
    synthesize_mri_cohort(cohort, SynthMRIConfig(n_subjects=2, n_sites=2, seed=3, voxel_size=6.0,
                                                 modalities=("T1w",)), progress=False)
    manifest = load_manifest(cohort / "manifest.csv")
    train_harmonizer(manifest, root / "runs" / "nyul", method="nyul", target_site="siteA", progress=False)
    train_harmonizer(manifest, root / "runs" / "tiny-sa", method="sa-cyclegan", target_site="siteA",
                     params=TINY_SA_CYCLEGAN, progress=False)
    return AppWorkspace(root, cohort, root / "runs" / "nyul", root / "runs" / "tiny-sa")


TINY_DECODE_DATA = dict(n_images=240, image_size=32,
                        simulation={"n_subjects": 2, "n_voxels": 200, "test_images": 60},
                        autoencoder_steps=5, variation_steps=5, batch_size=16, device="cpu")


@dataclass(frozen=True)
class DecodeWorkspace:
    """An app workspace holding a tiny simulated decoding data folder and a ridge run on subj01."""

    root: Path
    data: Path  # the simulated decoding data folder
    run: Path  # a ridge run on subj01


def make_decode_workspace(root: Path) -> DecodeWorkspace:
    """Simulate the tiny data folder under ``root/data/sim`` and train the page's quick ridge run (seconds)."""
    import torch
    from threadpoolctl import threadpool_limits

    from neuroattn.decode.pipeline import SimulateSettings, simulate_dataset
    from neuroattn.web.decode_page import train_quick_decoder
    from neuroattn.web.settings import load_settings

    settings = load_settings(root, data_roots=[], max_upload_mb=1)
    data = root / "data" / "sim"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on two shared cores, BLAS and torch threads mostly wait on each other
    try:
        with threadpool_limits(limits=1):
            simulate_dataset(data, SimulateSettings(**TINY_DECODE_DATA))
            run = train_quick_decoder(settings, data, "ridge")
    finally:
        torch.set_num_threads(threads)
    return DecodeWorkspace(root, data, run)
