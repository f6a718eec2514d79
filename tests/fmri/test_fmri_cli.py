"""`neuroattn fmri` end to end on a tiny synthetic cohort: synth-fmri -> tokenize -> pretrain -> probe -> evaluate."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_support import one_line_error, run_cli
from safetensors.torch import load_file

from neuroattn.fmri.inputs import read_fmri_runs
from neuroattn.fmri.registry import get_model

torch.set_num_threads(1)

MODELS = ["tablet", "slim-brain", "brainmae"]
N_SUBJECTS, N_FRAMES = 6, 16
# tiny sizes; SLIM-Brain's stage 1 cut to 2 steps, BrainMAE on the cohort's own ROI label image
CONFIGS = {
    "tablet": "model: tablet\nsize: tiny\nsteps: 3\nbatch_size: 2\nwarmup_steps: 1\n",
    "slim-brain": "model: slim-brain\nsize: tiny\nmodel_config:\n  extractor_steps: 2\nsteps: 3\nbatch_size: 2\n",
    "brainmae": "model: brainmae\nsize: tiny\nsteps: 3\nbatch_size: 2\nrois: {rois}\n",
}



@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Run the whole pipeline once from the command line; tests then inspect its files."""
    root = tmp_path_factory.mktemp("fmri_cli")
    cohort = root / "cohort"
    assert run_cli("data", "synth-fmri", "--out", cohort, "--subjects", N_SUBJECTS, "--frames", N_FRAMES,
                "--voxel-size", 10) == 0  # fmt: skip
    paths = {"root": root, "cohort": cohort, "labels": cohort / "participants.tsv", "tokens": root / "tokens"}
    assert run_cli("fmri", "tokenize", "--input", cohort, "--out", paths["tokens"]) == 0
    for name in MODELS:
        config = root / f"{name}.yaml"
        config.write_text(CONFIGS[name].format(rois=cohort / "rois_dseg.nii.gz"))
        run = paths[f"run:{name}"] = root / f"run-{name}"
        assert run_cli("fmri", "pretrain", "--config", config, "--input", cohort, "--out", run,
                    "--token-cache", paths["tokens"], "--device", "cpu") == 0  # fmt: skip
        probe = paths[f"probe:{name}"] = root / f"probe-{name}"
        assert run_cli("fmri", "probe", "--checkpoint", run, "--input", cohort, "--labels", paths["labels"],
                    "--out", probe, "--token-cache", paths["tokens"]) == 0  # fmt: skip
    paths["eval"] = root / "eval"
    assert run_cli("fmri", "evaluate", "--input", cohort, "--labels", paths["labels"], "--out", paths["eval"],
                *[a for n in MODELS for a in ("--checkpoint", f"{n}={paths[f'run:{n}']}")], "--with-random",
                "--token-cache", paths["tokens"]) == 0  # fmt: skip
    return paths


def test_tokenize_writes_safetensors_tokens_and_an_index_marked_untrained(done: dict[str, Path], capsys) -> None:
    index = json.loads((done["tokens"] / "index.json").read_text())
    tiny = get_model("tablet").tiny()
    assert len(index["runs"]) == N_SUBJECTS and index["autoencoder_trained"] is False and index["untrained"]
    first = index["runs"][0]
    tokens = load_file(str(done["tokens"] / first["file"]))["tokens"]
    assert tuple(tokens.shape) == (N_FRAMES, tiny.n_cells, tiny.token_dim) == tuple(first["shape"])  # (16, 8, 96)
    # the cached tokens are those of the run read back as (T, X, Y, Z)
    run = read_fmri_runs(Path(first["input"]))[0]
    expected = get_model("tablet").tokenizer(tiny)(run.frames)
    np.testing.assert_allclose(tokens.numpy(), expected, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert run_cli("fmri", "tokenize", "--input", done["cohort"], "--out", done["tokens"]) == 0
    assert f"0 computed, {N_SUBJECTS} cached" in capsys.readouterr().out
    assert run_cli("fmri", "tokenize", "--model", "brainmae", "--input", done["cohort"],
                   "--out", done["root"] / "x") == 0
    assert "on the fly" in capsys.readouterr().out and not (done["root"] / "x").exists()


@pytest.mark.parametrize("name", MODELS)
def test_pretrain_writes_a_loadable_checkpoint_and_curves(done: dict[str, Path], name: str) -> None:
    run = done[f"run:{name}"]
    info = json.loads((run / "fmri_run.json").read_text())
    family = get_model(name)
    assert info["model"] == name and info["trained"] is True and info["steps"] == 3
    assert bool(info["untrained"]) == (name == "tablet")  # TABLeT's random autoencoder is named as untrained
    meta = json.loads((run / "final" / "config.json").read_text())
    assert meta["model_class"] == family.model_class and meta["trained"] is True
    steps = pd.read_csv(run / "metrics.csv")["step"].tolist()
    assert steps[-1] == 3
    if name == "brainmae":  # ROI count and TR come from the data: 160 labelled ROIs, TR 2 s in the header
        assert (info["model_config"]["n_rois"], info["model_config"]["tr"]) == (160, 2.0)
        assert any("n_rois: 24 -> 160" in n for n in info["notes"])
    assert family.load(run).config.to_dict() == info["model_config"]


@pytest.mark.parametrize("name", MODELS)
def test_probe_scores_frozen_features_of_the_loaded_model(done: dict[str, Path], name: str) -> None:
    out = done[f"probe:{name}"]
    probe = json.loads((out / "probe.json").read_text())
    labels = pd.read_csv(done["labels"], sep="\t")["label"].to_numpy()
    assert probe["task"] == "classification" and probe["n_runs"] == N_SUBJECTS
    assert probe["chance"] == pytest.approx(np.bincount(labels).max() / len(labels))
    per_class = np.bincount(labels).min()
    assert len(probe["folds"]) == min(5, per_class)  # grouped stratified folds cannot exceed the rarest class
    assert probe["score"] == pytest.approx(np.mean(probe["folds"]))
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the features written are the API's embeddings of the same checkpoint (features.csv keeps 7 digits)
    family = get_model(name)
    model = family.load(done[f"run:{name}"])
    pipeline = json.loads((done[f"run:{name}"] / "fmri_run.json").read_text())["pipeline"]
    runs = read_fmri_runs(done["cohort"])
    arrays = family.prepare(runs, model.config, rois=pipeline["rois"])
    expected = family.embed(model, arrays, token_cache=done["tokens"])
    written = pd.read_csv(out / "features.csv", dtype={"subject": str})
    assert written["subject"].tolist() == [r.subject for r in runs]
    np.testing.assert_allclose(written.drop(columns="subject").to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_evaluate_compares_every_checkpoint_with_its_random_init(done: dict[str, Path]) -> None:
    metrics = json.loads((done["eval"] / "metrics.json").read_text())
    names = [m["name"] for m in metrics["models"]]
    assert names == [n for m in MODELS for n in (m, f"{m} (random init)")]
    for entry in metrics["models"]:
        if entry["name"].endswith("(random init)"):
            assert entry["trained"] is False and entry["untrained"][0] == "encoder (random init)"
        else:  # same features and folds as `fmri probe` of that checkpoint
            probe = json.loads((done[f"probe:{entry['model']}"] / "probe.json").read_text())
            assert entry["score"] == probe["score"] and entry["folds"] == probe["folds"]
    with open(done["eval"] / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == names
    assert all(float(r["score"]) == pytest.approx(m["score"]) for r, m in zip(rows, metrics["models"], strict=True))
    assert (done["eval"] / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_probe_without_checkpoint_is_a_random_init_labelled_untrained(done: dict[str, Path]) -> None:
    out = done["root"] / "probe-random"
    assert run_cli("fmri", "probe", "--model", "brainmae", "--input", done["cohort"], "--labels", done["labels"],
                "--rois", done["cohort"] / "rois_dseg.nii.gz", "--out", out) == 0  # fmt: skip
    probe = json.loads((out / "probe.json").read_text())
    assert probe["checkpoint"] is None and probe["trained"] is False and probe["untrained"] == ["encoder (random init)"]
    assert probe["name"] == "brainmae (random init)" and probe["feature_dim"] == get_model("brainmae").tiny().dim
    assert len(pd.read_csv(out / "features.csv")) == N_SUBJECTS


def test_brainmae_pretraining_resumes_from_its_checkpoint(done: dict[str, Path], tmp_path: Path, capsys) -> None:
    config = done["root"] / "brainmae.yaml"
    out = tmp_path / "run"
    args = ("fmri", "pretrain", "--config", config, "--input", done["cohort"], "--out", out)
    assert run_cli(*args, "--steps", 2) == 0
    err = one_line_error(capsys, *args, "--steps", 4)
    assert "already holds a training run" in err
    assert run_cli(*args, "--steps", 4, "--resume") == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert (summary["resumed_from"], summary["steps"], summary["finished"]) == (2, 4, True)
    assert pd.read_csv(out / "metrics.csv")["step"].tolist()[-1] == 4
    assert json.loads((out / "fmri_run.json").read_text())["steps"] == 4



def test_bad_inputs_give_one_line_and_exit_2(done: dict[str, Path], tmp_path: Path, capsys) -> None:
    cohort, labels, run = done["cohort"], done["labels"], done["run:brainmae"]
    short = tmp_path / "labels.tsv"
    short.write_text("\n".join(labels.read_text().splitlines()[:-1]) + "\n")  # drops the last subject
    err = one_line_error(capsys, "fmri", "probe", "--checkpoint", run, "--input", cohort, "--labels", short,
                          "--out", tmp_path / "p")  # fmt: skip
    assert f"no 'label' label for subject(s) {N_SUBJECTS:03d}" in err
    err = one_line_error(capsys, "fmri", "probe", "--checkpoint", run, "--input", cohort, "--labels", labels,
                          "--label-column", "age", "--out", tmp_path / "p")  # fmt: skip
    assert "no label column 'age'" in err
    err = one_line_error(capsys, "fmri", "pretrain", "--model", "swiftx", "--input", cohort, "--out", tmp_path / "r")
    assert "unknown fMRI model 'swiftx'; available: brainmae, slim-brain, tablet" in err
    err = one_line_error(capsys, "fmri", "pretrain", "--model", "tablet", "--input", tmp_path / "nowhere",
                          "--out", tmp_path / "r")  # fmt: skip
    assert "nowhere: not found" in err
    config = tmp_path / "typo.yaml"
    config.write_text("model: tablet\nmodel_config:\n  tokenizer:\n    cube: 16\n")
    err = one_line_error(capsys, "fmri", "pretrain", "--config", config, "--input", cohort, "--out", tmp_path / "r")
    assert f"{config}: model_config.tokenizer: unknown setting(s) ['cube']" in err
    err = one_line_error(capsys, "fmri", "probe", "--checkpoint", run, "--model", "tablet", "--input", cohort,
                          "--labels", labels, "--out", tmp_path / "p")  # fmt: skip
    assert "holds a brainmae model, but --model is 'tablet'" in err
    err = one_line_error(capsys, "fmri", "evaluate", "--checkpoint", cohort, "--input", cohort, "--labels", labels,
                          "--out", tmp_path / "e")  # fmt: skip
    assert "not a checkpoint folder" in err
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists() and not (tmp_path / "p").exists()


def test_shipped_pipeline_configs_validate() -> None:
    from neuroattn.commands.fmri import resolve_settings

    folder = Path(__file__).resolve().parents[2] / "pipelines" / "fmri"
    found = sorted(p.name for p in folder.glob("*.yaml"))
    assert found == sorted(f"{m}-{s}.yaml" for m in MODELS for s in ("small", "published"))
    for path in folder.glob("*.yaml"):
        family, pipeline, config = resolve_settings(None, path)
        assert path.name.startswith(family.name) and pipeline.steps > 0
        if path.stem.endswith("published"):
            assert config == family.published()
        else:
            assert config != family.published()
