"""Pipeline YAML configs: every shipped file validates; typos and wrong types are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from neuroattn.errors import ConfigError
from neuroattn.harmonize.demo_run import HarmonizationDemoConfig
from neuroattn.pipelines import load_pipeline_config

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
CONFIG_CLASSES = {"harmonization": HarmonizationDemoConfig}


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_validate(path: Path) -> None:
    config = load_pipeline_config(path, CONFIG_CLASSES[path.stem.split("-")[0]])
    assert config.steps > 0 and config.n_holdout >= 2


def test_demo_yaml_equals_the_built_in_defaults() -> None:
    assert load_pipeline_config(PIPELINES / "harmonization-demo.yaml", HarmonizationDemoConfig) == (
        HarmonizationDemoConfig()
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("stepz: 3\n", "unknown setting(s) ['stepz']"), ("steps: many\n", "steps: Input should be a valid integer"),
     ("- 1\n- 2\n", "expected a mapping"), ("steps: [\n", "not valid YAML")],
)
def test_bad_config_messages(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_pipeline_config(path, HarmonizationDemoConfig)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_model_settings_agree_with_model_or_say_what_to_give(tmp_path: Path) -> None:
    from neuroattn.encode.runs import EncodeSettings
    from neuroattn.pipelines import model_settings

    path = tmp_path / "lavca.yaml"
    path.write_text("model: lavca\nk: 50\n")
    assert model_settings(path, None, EncodeSettings, "ridge | lavca").k == 50
    assert model_settings(None, "ridge", EncodeSettings, "ridge | lavca") == EncodeSettings(model="ridge")
    with pytest.raises(ConfigError, match="settings for 'lavca', but --model is 'ridge'"):
        model_settings(path, "ridge", EncodeSettings, "ridge | lavca")
    with pytest.raises(ConfigError, match=r"give --model \(ridge \| lavca\) or --config"):
        model_settings(None, None, EncodeSettings, "ridge | lavca")
