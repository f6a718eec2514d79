"""MRI harmonization: estimators that map every site's scans onto a target site, with classical baselines."""

from neuroattn.harmonize.base import (
    HARMONIZERS,
    BaseHarmonizer,
    NotFittedError,
    SingleSubjectSiteWarning,
    UnknownSiteError,
    create_harmonizer,
    register_harmonizer,
)
from neuroattn.harmonize.combat import ComBatHarmonizer
from neuroattn.harmonize.inputs import HarmonizationData, LoadedCohort, prepare_inputs, volumes_from_manifest
from neuroattn.harmonize.intensity import NyulHarmonizer, RawHarmonizer, WhiteStripeHarmonizer, ZScoreHarmonizer
from neuroattn.harmonize.model_harmonizer import SACycleGANHarmonizer

__all__ = [
    "HARMONIZERS",
    "BaseHarmonizer",
    "ComBatHarmonizer",
    "HarmonizationData",
    "LoadedCohort",
    "NotFittedError",
    "NyulHarmonizer",
    "RawHarmonizer",
    "SACycleGANHarmonizer",
    "SingleSubjectSiteWarning",
    "UnknownSiteError",
    "WhiteStripeHarmonizer",
    "ZScoreHarmonizer",
    "create_harmonizer",
    "prepare_inputs",
    "register_harmonizer",
    "volumes_from_manifest",
]
