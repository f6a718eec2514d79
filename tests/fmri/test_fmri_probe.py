"""The shared linear probe finds a planted linear signal and reports chance without one."""

from __future__ import annotations

import numpy as np
import pytest

from neuroattn.errors import ConfigError
from neuroattn.fmri.probe import cross_validated_probe


def test_probe_recovers_planted_class_signal_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    signal = rng.normal(size=(80, 8))
    signal[:, 0] += 3.0 * y  # Bayes accuracy Φ(1.5) ≈ 0.93, AUC Φ(3/√2) ≈ 0.98
    result = cross_validated_probe(signal, y, groups=np.arange(80) // 2)
    noise = cross_validated_probe(rng.normal(size=(80, 8)), y, groups=np.arange(80) // 2)
    assert result.score > 0.85 and result.auc is not None and result.auc > 0.93
    assert abs(noise.score - 0.5) < 0.2
    assert result.chance == 0.5


def test_probe_regression_r2_and_group_leakage_guard() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5))
    y = x @ np.array([1.0, -2.0, 0.0, 0.5, 0.0]) + 0.1 * rng.normal(size=60)
    assert cross_validated_probe(x, y, task="regression").score > 0.95
    with pytest.raises(ConfigError, match="at least 2 groups"):
        cross_validated_probe(x, y, task="regression", groups=np.zeros(60))
    with pytest.raises(ConfigError, match="'task' must be one of"):
        cross_validated_probe(x, y, task="ranking")


def test_probe_folds_never_exceed_the_rarest_class() -> None:
    rng = np.random.default_rng(2)
    y = np.array([0] * 12 + [1] * 3)
    x = rng.normal(size=(15, 3)) + 4.0 * y[:, None]
    result = cross_validated_probe(x, y, n_folds=5)
    assert len(result.folds) == 3 and result.score > 0.8
    with pytest.raises(ConfigError, match="at least 2 groups per class"):
        cross_validated_probe(x[:13], y[:13])
