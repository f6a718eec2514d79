"""The harmonizer estimator contract: parameters, validation errors, registry, manifests, save/load."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from neuroattn.data.synth_mri import SynthMRIConfig, synthesize_mri_cohort
from neuroattn.errors import CheckpointError, ConfigError, InvalidInputError, NeuroattnError
from neuroattn.harmonize import (
    HARMONIZERS,
    BaseHarmonizer,
    ComBatHarmonizer,
    NotFittedError,
    NyulHarmonizer,
    SingleSubjectSiteWarning,
    UnknownSiteError,
    ZScoreHarmonizer,
    create_harmonizer,
    volumes_from_manifest,
)
from neuroattn.io.manifest import load_manifest
from neuroattn.io.nifti import volume_from_array

SHAPE = (10, 11, 12)
BASELINES = ("raw", "zscore", "whitestripe", "nyul", "combat")


def toy_cohort(n_subjects: int = 3, seed: int = 0) -> dict:
    """Two sites, two modalities; siteB = 1.7 * siteA + 0.3 with its own noise. One shared grid and mask."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(np.float64)
    centre = (np.array(SHAPE)[:, None, None, None] - 1) / 2
    mask = (((grid - centre) / (np.array(SHAPE)[:, None, None, None] / 2.3)) ** 2).sum(axis=0) <= 1.0
    volumes, sites, subjects, modalities = [], [], [], []
    for s in range(n_subjects):
        anatomy = rng.gamma(4.0, 0.1, SHAPE) + 0.5 * mask
        for site, (a, b) in (("siteA", (1.0, 0.0)), ("siteB", (1.7, 0.3))):
            for m, power in (("T1w", 1.0), ("T2w", 2.0)):
                img = a * anatomy**power + b + rng.normal(0, 0.02, SHAPE)
                volumes.append((img * mask).astype(np.float32))
                sites.append(site)
                subjects.append(f"sub-{s}")
                modalities.append(m)
    return {"volumes": volumes, "sites": sites, "subjects": subjects, "modalities": modalities, "mask": mask}


@pytest.fixture(scope="module")
def cohort() -> dict:
    return toy_cohort()


def fit(h: BaseHarmonizer, c: dict) -> BaseHarmonizer:
    return h.fit(c["volumes"], c["sites"], c["mask"], subjects=c["subjects"], modalities=c["modalities"])


def test_init_only_stores_parameters_and_get_set_params_round_trip():
    h = NyulHarmonizer(target_site="siteB", percentiles=(2, 50, 98), progress=False)
    assert h.get_params() == {"target_site": "siteB", "percentiles": (2, 50, 98), "progress": False}
    assert not any(k.endswith("_") for k in vars(h))
    assert h.set_params(target_site="siteA") is h and h.target_site == "siteA"
    assert repr(h) == "NyulHarmonizer(target_site='siteA', percentiles=(2, 50, 98), progress=False)"
    with pytest.raises(ConfigError, match="'bogus' is not a parameter of NyulHarmonizer"):
        h.set_params(bogus=1)


@pytest.mark.parametrize("name", BASELINES)
def test_fit_sets_learned_attributes_and_transform_keeps_shapes(cohort, name):
    h = fit(create_harmonizer(name, progress=False), cohort)
    assert h.sites_ == ["siteA", "siteB"] and h.target_site_ == "siteA"
    assert h.modalities_ == ["T1w", "T2w"] and h.n_subjects_ == {"siteA": 3, "siteB": 3}
    out = h.transform(cohort["volumes"][:4], cohort["sites"][:4], cohort["mask"], modalities=cohort["modalities"][:4])
    assert [o.shape for o in out] == [SHAPE] * 4 and all(o.dtype == np.float32 for o in out)


def test_target_site_parameter_and_unknown_target(cohort):
    h = fit(ZScoreHarmonizer(target_site="siteB", progress=False), cohort)
    assert h.target_site_ == "siteB"
    expected = r"target_site 'siteZ' is not among the sites given to fit: \['siteA', 'siteB'\]"
    with pytest.raises(InvalidInputError, match=expected):
        fit(ZScoreHarmonizer(target_site="siteZ", progress=False), cohort)


def test_fit_transform_equals_fit_then_transform(cohort):
    a = ZScoreHarmonizer(progress=False).fit_transform(cohort["volumes"], cohort["sites"], cohort["mask"],
                                                       modalities=cohort["modalities"])
    h = fit(ZScoreHarmonizer(progress=False), cohort)
    b = h.transform(cohort["volumes"], cohort["sites"], cohort["mask"], modalities=cohort["modalities"])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_not_fitted_message():
    for call in (lambda h: h.transform([np.ones(SHAPE)], ["siteA"]), lambda h: h.save("unused")):
        with pytest.raises(NotFittedError, match=r"^This ComBatHarmonizer is not fitted yet; call fit first$"):
            call(ComBatHarmonizer(progress=False))
    assert issubclass(NotFittedError, NeuroattnError)


def test_unknown_site_at_transform_names_known_sites(cohort):
    h = fit(ComBatHarmonizer(progress=False), cohort)
    with pytest.raises(UnknownSiteError, match=r"^site 'siteQ' was not seen during fit; known: \['siteA', 'siteB'\]$"):
        h.transform(cohort["volumes"][:1], ["siteQ"], cohort["mask"], modalities=["T1w"])
    with pytest.raises(InvalidInputError, match="'sites' is required"):
        h.transform(cohort["volumes"][:1], None, cohort["mask"], modalities=["T1w"])
    with pytest.raises(InvalidInputError, match=r"modality 'FLAIR' was not seen during fit; known: \['T1w', 'T2w'\]"):
        h.transform(cohort["volumes"][:1], ["siteB"], cohort["mask"], modalities=["FLAIR"])


def test_intensity_methods_accept_new_sites_at_transform(cohort):
    """Per-volume intensity mappings need no site parameters, so an unseen site is harmonized like any other."""
    h = fit(NyulHarmonizer(progress=False), cohort)
    new = h.transform(cohort["volumes"][2:3], ["siteNew"], cohort["mask"], modalities=["T1w"])[0]
    old = h.transform(cohort["volumes"][2:3], ["siteB"], cohort["mask"], modalities=["T1w"])[0]
    np.testing.assert_array_equal(new, old)


def test_single_subject_site_warns_but_fits(cohort):
    vols = cohort["volumes"][:4] + cohort["volumes"][4:8]  # sub-0 (both sites) and sub-1 (both sites)
    subjects = ["sub-0"] * 4 + ["sub-1"] * 4
    sites = ["siteA", "siteA", "siteB", "siteB", "siteA", "siteA", "siteA", "siteA"]  # siteB: one subject
    with pytest.warns(SingleSubjectSiteWarning, match="site 'siteB' has a single subject"):
        h = ZScoreHarmonizer(progress=False).fit(vols, sites, cohort["mask"], subjects=subjects,
                                                 modalities=cohort["modalities"][:8])
    assert h.n_subjects_ == {"siteA": 2, "siteB": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(ZScoreHarmonizer(progress=False), cohort)  # three subjects per site: silent


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sites": ["siteA"] * 5}, r"^got 6 volume\(s\) but 5 sites; give one entry per volume$"),
        ({"modalities": ["T1w"] * 7}, r"^got 6 volume\(s\) but 7 modalities; give one entry per volume$"),
        ({"masks": [np.ones(SHAPE, bool)] * 2}, r"^got 6 volume\(s\) but 2 masks; give one mask per volume$"),
        ({"masks": np.ones((3, 3, 3), bool)},
         r"^masks\[0\] has shape \(3, 3, 3\) but volumes\[0\] has shape \(10, 11, 12\)$"),
        ({"masks": np.zeros(SHAPE, bool)},
         r"^masks\[0\] \(for volumes\[0\]\) is empty: no voxel inside the brain mask$"),
        ({"sites": None}, r"'sites' is required for fit"),
        ({"sites": "siteA"}, r"one label per volume, not the string 'siteA'"),
    ],
)
def test_input_errors_are_one_line(kwargs, message):
    rng = np.random.default_rng(1)
    args = {"volumes": [rng.random(SHAPE).astype(np.float32) + 0.1 for _ in range(6)],
            "sites": ["siteA", "siteB"] * 3, "masks": None, "modalities": None}
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=message) as info:
        ZScoreHarmonizer(progress=False).fit(args["volumes"], args["sites"], args["masks"],
                                             modalities=args["modalities"])
    assert "\n" not in str(info.value)


def test_nan_and_dimension_errors_name_the_volume_or_its_file(tmp_path):
    good = np.ones(SHAPE, np.float32)
    bad = good.copy()
    bad[0, 0, :3] = np.nan
    with pytest.raises(InvalidInputError, match=r"^volumes\[1\] contains 3 NaN or infinite voxel\(s\)$"):
        ZScoreHarmonizer(progress=False).fit([good, bad], ["a", "b"])
    vol = volume_from_array(np.stack([good, good], axis=-1))
    vol.path = tmp_path / "sub-01_bold.nii.gz"
    with pytest.raises(InvalidInputError, match=r"sub-01_bold.nii.gz: has 4 dimension\(s\).*expected a 3-D volume"):
        ZScoreHarmonizer(progress=False).fit([good, vol], ["a", "b"])
    with pytest.raises(InvalidInputError, match="no nonzero voxel; pass a brain mask"):
        ZScoreHarmonizer(progress=False).fit([good, np.zeros(SHAPE)], ["a", "b"])
    with pytest.raises(InvalidInputError, match="not a single array"):
        ZScoreHarmonizer(progress=False).fit(good, ["a"])


def test_combat_requires_one_grid(cohort):
    vols = list(cohort["volumes"])
    vols[3] = np.ones((5, 5, 5), np.float32)
    with pytest.raises(InvalidInputError, match=r"^volumes\[3\] has shape \(5, 5, 5\) but others have \(10, 11, 12\); "
                                                "voxel-wise ComBat needs co-registered volumes on one voxel grid$"):
        ComBatHarmonizer(progress=False).fit(vols, cohort["sites"], modalities=cohort["modalities"])


def test_target_site_must_have_every_modality(cohort):
    mods = ["T1w" if s == "siteA" else m for s, m in zip(cohort["sites"], cohort["modalities"], strict=True)]
    with pytest.raises(InvalidInputError, match="the target site 'siteA' has no volume of modality 'T2w'"):
        ZScoreHarmonizer(progress=False).fit(cohort["volumes"], cohort["sites"], cohort["mask"], modalities=mods)


def test_registry_lists_names_and_suggests_the_closest():
    assert set(BASELINES) <= set(HARMONIZERS)
    assert isinstance(create_harmonizer("ZScore", target_site="x"), ZScoreHarmonizer)
    assert create_harmonizer("combat", eb=False).eb is False
    with pytest.raises(ConfigError, match=re.escape("'method' must be one of [") + r".*'zscor' was provided; "
                                          r"did you mean 'zscore'\?$"):
        create_harmonizer("zscor")
    with pytest.raises(ConfigError, match=r"was provided\.$"):
        create_harmonizer("qqqqqq")
    with pytest.raises(ConfigError, match=r"method 'nyul'.*unexpected keyword argument 'width'"):
        create_harmonizer("nyul", width=0.1)


@pytest.mark.parametrize("name", BASELINES)
def test_save_load_round_trip_gives_identical_transforms(tmp_path, cohort, name):
    h = fit(create_harmonizer(name, progress=False), cohort)
    path = h.save(tmp_path / name)
    config = json.loads((path / "config.json").read_text())
    assert config["model_class"] == type(h).__name__ and config["trained"] is True
    assert config["config"]["params"]["target_site"] is None and config["config"]["method"] == name
    assert not list(path.glob("*.pkl")) and not list(path.glob("*.pt"))
    for loader in (type(h), BaseHarmonizer):
        again = loader.load(path)
        assert type(again) is type(h) and again.get_params() == {
            k: list(v) if isinstance(v, tuple) else v for k, v in h.get_params().items()}
        assert (again.sites_, again.target_site_, again.modalities_) == (h.sites_, h.target_site_, h.modalities_)
        args = (cohort["volumes"], cohort["sites"], cohort["mask"])
        for x, y in zip(h.transform(*args, modalities=cohort["modalities"]),
                        again.transform(*args, modalities=cohort["modalities"]), strict=True):
            np.testing.assert_array_equal(x, y)


def test_load_refuses_another_class(tmp_path, cohort):
    path = fit(NyulHarmonizer(progress=False), cohort).save(tmp_path / "nyul")
    with pytest.raises(CheckpointError, match="holds a NyulHarmonizer, expected a ZScoreHarmonizer"):
        ZScoreHarmonizer.load(path)


def test_manifest_input_gives_the_same_result_as_arrays(tmp_path):
    cfg = SynthMRIConfig(n_subjects=2, n_sites=2, seed=3, voxel_size=8.0, modalities=("T1w", "T2w"))
    result = synthesize_mri_cohort(tmp_path / "cohort", cfg, progress=False)
    manifest = load_manifest(result.manifest_path)
    loaded = volumes_from_manifest(manifest, progress=False)
    assert loaded.sites == list(manifest.table["site"]) and all(m is not None for m in loaded.masks)
    h = ZScoreHarmonizer(progress=False).fit(manifest)
    assert h.target_site_ == "siteA" and h.modalities_ == ["T1w", "T2w"] and h.n_subjects_ == {"siteA": 2, "siteB": 2}
    from_manifest = h.transform(manifest)
    arrays = [v.data for v in loaded.volumes]
    from_arrays = ZScoreHarmonizer(progress=False).fit(
        arrays, loaded.sites, loaded.masks, subjects=loaded.subjects, modalities=loaded.modalities
    ).transform(arrays, loaded.sites, loaded.masks, modalities=loaded.modalities)
    for x, y in zip(from_manifest, from_arrays, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(InvalidInputError, match="a Manifest carries its own labels; do not also pass sites"):
        h.fit(manifest, ["siteA"])
