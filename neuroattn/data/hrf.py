"""Time-domain building blocks for synthetic BOLD: canonical HRF, task regressors, drift and slow noise."""

from __future__ import annotations

import numpy as np
import pandas as pd

HRF_OVERSAMPLING = 50  # sub-TR samples per frame when convolving; nilearn's default
EVENT_COLUMNS = ("onset", "duration", "trial_type")


def frame_times(n_frames: int, tr: float) -> np.ndarray:
    """Acquisition time of each frame in seconds, shape ``(T,)``; frame ``t`` is sampled at ``t * tr``."""
    return np.arange(n_frames, dtype=float) * tr


def canonical_hrf(tr: float, oversampling: int = HRF_OVERSAMPLING, time_length: float = 32.0) -> np.ndarray:
    """SPM canonical double-gamma HRF sampled every ``tr / oversampling`` seconds.

    Uses :func:`nilearn.glm.first_level.spm_hrf` (peak gamma of shape 6, undershoot of shape 16 at ratio 1/6).
    The kernel sums to 1, so a sustained unit boxcar convolved with it settles at 1.

    Returns
    -------
    np.ndarray
        Shape ``(round(time_length * oversampling / tr),)``.
    """
    from nilearn.glm.first_level import spm_hrf

    return np.asarray(spm_hrf(tr, oversampling=oversampling, time_length=time_length), dtype=float)


def trial_peak_response(duration: float, tr: float, oversampling: int = HRF_OVERSAMPLING) -> float:
    """Peak of the canonical response to one isolated unit boxcar of ``duration`` seconds.

    About 0.21 for a 1 s event and 1.14 for a 20 s block (a long block settles at 1, as the HRF sums to 1);
    dividing a regressor by it makes its coefficient the response's peak height.
    """
    hrf = canonical_hrf(tr, oversampling)
    n = max(1, round(duration * oversampling / tr))  # boxcar length in sub-TR samples
    return float(np.convolve(np.ones(n), hrf).max())


def task_regressors(
    events: pd.DataFrame, n_frames: int, tr: float, conditions: list[str] | tuple[str, ...] | None = None
) -> tuple[np.ndarray, list[str]]:
    """HRF-convolved regressors for each ``trial_type`` of a BIDS-style events table.

    Parameters
    ----------
    events
        Columns ``onset`` (s), ``duration`` (s) and ``trial_type``; an optional ``modulation`` column (amplitude).
    n_frames, tr
        Number of frames and repetition time in seconds.
    conditions
        Condition order of the output columns (default: sorted unique ``trial_type``). A condition without
        events gives an all-zero column.

    Returns
    -------
    regressors : np.ndarray
        Shape ``(T, C)``, one column per condition, in the unit of the boxcar (1 for an unmodulated block).
    names : list[str]
        The ``C`` condition names.
    """
    from nilearn.glm.first_level import compute_regressor

    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events table lacks column(s) {missing}; it needs {list(EVENT_COLUMNS)}")
    names = sorted(events["trial_type"].unique()) if conditions is None else list(conditions)
    times = frame_times(n_frames, tr)
    out = np.zeros((n_frames, len(names)), dtype=float)
    for j, name in enumerate(names):
        rows = events[events["trial_type"] == name]
        if rows.empty:
            continue
        amplitude = rows["modulation"].to_numpy(float) if "modulation" in rows else np.ones(len(rows))
        condition = np.vstack([rows["onset"].to_numpy(float), rows["duration"].to_numpy(float), amplitude])
        reg, _ = compute_regressor(condition, "spm", times, con_id=name, oversampling=HRF_OVERSAMPLING)
        out[:, j] = reg[:, 0]
    return out, names


def drift_basis(n_frames: int, tr: float, order: int = 2, n_cosines: int = 1) -> np.ndarray:
    """Slow scanner-drift basis: Legendre polynomials of degree 1..``order`` and the slowest DCT cosines.

    Every column reaches (about) +-1 over the run and has no constant part, so coefficients are drift amplitudes.

    Returns
    -------
    np.ndarray
        Shape ``(T, order + n_cosines)``.
    """
    u = np.linspace(-1.0, 1.0, n_frames)
    cols = [np.polynomial.legendre.Legendre.basis(k)(u) for k in range(1, order + 1)]
    t = frame_times(n_frames, tr)
    duration = n_frames * tr
    # DCT-II half-periods k = 2.. (k = 1 is almost the linear trend already in the polynomials)
    cols += [np.cos(np.pi * (k + 1) * (t + tr / 2) / duration) for k in range(1, n_cosines + 1)]
    if not cols:
        return np.zeros((n_frames, 0))
    return np.stack(cols, axis=1)


def bandlimited_noise(
    rng: np.random.Generator, n_frames: int, n_series: int, tr: float, low_hz: float, high_hz: float
) -> np.ndarray:
    """Gaussian noise restricted to ``[low_hz, high_hz]`` (the resting-state band), unit variance per column.

    The band is cut in the Fourier domain with raised-cosine edges on a run padded to twice its length, so the
    series do not wrap around; each column is then centred and scaled to unit sample standard deviation.

    Returns
    -------
    np.ndarray
        Shape ``(T, n_series)``.
    """
    nyquist = 0.5 / tr
    if not 0 <= low_hz < high_hz:
        raise ValueError(f"need 0 <= low_hz < high_hz, got low_hz={low_hz}, high_hz={high_hz}")
    high_hz = min(high_hz, nyquist)
    n_pad = 2 * n_frames
    white = rng.standard_normal((n_pad, n_series))
    freqs = np.fft.rfftfreq(n_pad, d=tr)
    edge = 0.2 * (high_hz - low_hz)  # Hz; soft edges avoid ringing across the whole run
    gain = np.clip(np.minimum((freqs - low_hz) / edge + 0.5, (high_hz - freqs) / edge + 0.5), 0.0, 1.0)
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)
    shaped = np.fft.irfft(np.fft.rfft(white, axis=0) * gain[:, None], n=n_pad, axis=0)[:n_frames]
    shaped -= shaped.mean(axis=0, keepdims=True)
    return shaped / shaped.std(axis=0, keepdims=True)
