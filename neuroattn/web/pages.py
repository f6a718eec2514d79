"""The app's page registry: each pipeline adds its page here and Home lists and links every one."""

from __future__ import annotations

from dataclasses import dataclass

from neuroattn.errors import ConfigError


@dataclass(frozen=True)
class AppPage:
    """One page of the app; ``script`` is relative to the app folder (``app/``)."""

    key: str  # URL path, e.g. "viewer"
    title: str
    icon: str
    script: str
    summary: str  # one line for the Home page
    area: str = "MRI"


_PAGES: dict[str, AppPage] = {}


def register_page(page: AppPage) -> AppPage:
    """Add a page; keys are unique."""
    if page.key in _PAGES and _PAGES[page.key] != page:
        raise ConfigError(f"an app page with key '{page.key}' is already registered")
    _PAGES[page.key] = page
    return page


def registered_pages() -> list[AppPage]:
    """Every page in registration order (the built-in ones first)."""
    _register_builtin()
    return list(_PAGES.values())


def _register_builtin() -> None:
    for page in (
        AppPage("viewer", "Viewer", ":material/visibility:", "views/viewer.py",
                "Open a 3-D or 4-D NIfTI: orthogonal slices, header, histogram, time courses, compare two volumes."),
        AppPage("harmonize", "Harmonize", ":material/tune:", "views/harmonize.py",
                "Harmonize one scan with a trained SA-CycleGAN-2.5D (or a baseline) and download the result."),
        AppPage("cohort", "Cohort", ":material/groups:", "views/cohort.py",
                "Harmonize a whole cohort (manifest CSV, BIDS or folder): live status, resume, zip, evaluation."),
        AppPage("report", "Report", ":material/analytics:", "views/report.py",
                "Read an evaluation: MMD, domain classifier, PSNR/SSIM/Dice vs ground truth, baselines side by side."),
        AppPage("decode", "Decode", ":material/image_search:", "views/decode.py",
                "Decode fMRI betas into images: top-k retrieval among the stimuli and diffusion reconstructions.",
                area="Decoding"),
        AppPage("encode", "Encode", ":material/psychology:", "views/encode.py",
                "Encoding runs: text-query selectivity maps, test accuracy per ROI and LaVCa voxel captions.",
                area="Encoding"),
        AppPage("brain3d", "Brain3D", ":material/view_in_ar:", "views/brain3d.py",
                "Make a 3-D object from one fMRI trial (or an image): interactive mesh, turntable and downloads.",
                area="Decoding"),
    ):
        _PAGES.setdefault(page.key, page)
