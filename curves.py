"""Learning curves of `.out` files: each seed smoothed, then the mean over seeds with its 95%
bootstrap band (`scoring.bootstrap_ci`), and that curve drawn on a matplotlib `Axes`. The
library under `plot_metric.py` and the Figure 4 plot (`figure4/figure.py`).

For each file the metric is loaded as an ``(evaluations, S)`` array, every ``frequency``-th
evaluation is kept, and each seed and the times are smoothed alike with a 'valid' moving average
of width ``window`` (N - w + 1 points). Diverged seeds are left out (`results.healthy_values`).

It draws on an `Axes` it is given and never touches pyplot, so importing it selects no backend:
the scripts that may open a window call `select_backend` in their `main`; the Figure 4 plot
draws on a bare `matplotlib.figure.Figure` and needs none.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import matplotlib
import numpy as np

from scoring import bootstrap_ci
from training.results import ResultsError, healthy_values, load_out, metric_values


class CurveError(ResultsError):
    """A curve that cannot be drawn (a window wider than the run): one line, exit status 2."""


def subsample(x: np.ndarray, frequency: int) -> np.ndarray:
    """Keep every ``frequency``-th entry along axis 0, starting with the first."""
    if frequency < 1:
        raise CurveError(f"frequency must be >= 1, got {frequency}")
    return np.asarray(x)[::frequency]


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """'Valid' moving average of width ``window`` along axis 0 (N - window + 1 points).

    Works for 1-D ``(N,)`` and 2-D ``(N, S)`` arrays (each column smoothed on its own).
    """
    x = np.asarray(x, dtype=np.float64)
    if window < 1:
        raise CurveError(f"window must be >= 1, got {window}")
    if window > x.shape[0]:
        raise CurveError(f"window {window} is larger than the number of points {x.shape[0]}")
    windows = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)
    return windows.mean(axis=-1)


def curve(
    times: np.ndarray, values: np.ndarray, window: int = 1, frequency: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Subsample, smooth and summarise one run: ``(times, mean, low, high)``."""
    times, values = subsample(times, frequency), subsample(values, frequency)
    if window > times.shape[0]:
        raise CurveError(
            f"window {window} is larger than the number of points {times.shape[0]}"
            + (f" (after keeping every {frequency}-th evaluation)" if frequency > 1 else "")
        )
    smooth_times = moving_average(times, window)
    mean, low, high = bootstrap_ci(moving_average(values, window))
    return smooth_times, mean, low, high


def file_curve(path: str, metric: str, window: int | Callable[[int], int] = 1, frequency: int = 1):
    """One file's curve: `(curve(...) or None when every seed diverged, notes to report)`.
    `window` may be a function of the number of evaluations (the Figure 4 plot's default)."""
    metrics = load_out(path)["metrics"]
    times, values = metric_values(path, metrics, metric)
    values, notes = healthy_values(path, metrics, metric, values)
    if values.shape[1] == 0:
        return None, notes  # every seed diverged: nothing to draw (the note says so)
    window = window(len(times)) if callable(window) else window
    try:
        return curve(times, values, window, frequency), notes
    except CurveError as e:
        raise CurveError(f"{path}: {e}") from None


def draw_curve(ax, summary, label: str, color=None):
    """The mean line and its 95% band on `ax`; returns the line."""
    times, mean, low, high = summary
    (line,) = ax.plot(times, mean, label=label, color=color)
    ax.fill_between(times, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


# --------------------------------------------------------------------------------------------
# A window or only files
# --------------------------------------------------------------------------------------------

_NON_INTERACTIVE_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def _has_display() -> bool:
    """False on Linux/BSD without an X or Wayland display; other platforms always have one."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def select_backend() -> None:
    """Use 'Agg' when no window can be shown, unless the user chose a backend (MPLBACKEND).
    The scripts that may show a window (`plot_metric.py`, `sweep_summary.py`) call it in
    `main`, before their first figure: importing them changes nothing."""
    if not _has_display() and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")


def can_show() -> bool:
    """True when the active matplotlib backend can open a window."""
    backend = str(matplotlib.get_backend()).lower()
    return _has_display() and backend not in _NON_INTERACTIVE_BACKENDS
