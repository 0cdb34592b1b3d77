"""Plot a metric over training time from one or more `.out` files (SPEC sections 1 and 11).

Usage::

    python plot_metric.py --data ER.out perfect_model.out [--window 10] [--frequency 2]
                          [--metric reward_rates] [--save curves.png] [--title TITLE]

Each `.out` file is a pickle of ``{'config': SimpleNamespace, 'metrics': {metric: [array of
shape (S,) per evaluation], 'eval_times': [int per evaluation]}}`` holding plain numpy arrays.
For each file the metric is loaded as an ``(evaluations, S)`` array, every ``frequency``-th
evaluation is kept, each seed and the times are smoothed alike with a 'valid' moving average
of width ``window`` (N - w + 1 points), and the mean over seeds is drawn against the smoothed
times with a 95% confidence band.

Diverged seeds: when a file records ``'diverged'`` (one bool array of shape (S,) per
evaluation, True once a seed's Q values or losses became NaN or infinite), the seeds that
diverged at any evaluation are left out of that file's mean and band, and a line on stderr
says which; a file whose seeds all diverged draws no line. Plotting ``--metric diverged``
itself keeps every seed (its mean is the fraction of seeds diverged). Other NaN or infinite
values never stop the plot: they leave gaps in the line, and stderr says how many there are.

Confidence band: a percentile bootstrap over seeds (like seaborn's default in the reference),
1000 resamples of the S seeds with replacement, a fixed RNG seed so the figure is
deterministic; the band at each time is the 2.5th to 97.5th percentile of the resampled means.

This module imports only the standard library, numpy and matplotlib (no jax, nothing of this
project), so it runs anywhere the `.out` files are copied to. On a machine without a display it
selects matplotlib's non-interactive 'Agg' backend and never opens a window.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

import matplotlib
import numpy as np

TIMES_KEY = "eval_times"
DIVERGED_KEY = "diverged"
DEFAULT_METRIC = "reward_rates"
NUM_BOOTSTRAP = 1000
CONFIDENCE = 95.0
BOOTSTRAP_SEED = 0
_NON_INTERACTIVE_BACKENDS = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}


def _has_display() -> bool:
    """False on Linux/BSD without an X or Wayland display; other platforms always have one."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _select_backend() -> None:
    """Use 'Agg' when no window can be shown, unless the user chose a backend (MPLBACKEND)."""
    if not _has_display() and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")


_select_backend()


class PlotError(Exception):
    """A user-facing error: reported as one line on stderr with exit status 2."""


# --------------------------------------------------------------------------------------------
# Pure data functions
# --------------------------------------------------------------------------------------------


def label_for(path: str) -> str:
    """Legend label of a file: its path without the `.out` suffix."""
    return path[: -len(".out")] if path.endswith(".out") else path


def load_out(path: str) -> dict:
    """Load a `.out` pickle and check its structure; raise PlotError with a clear reason."""
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except FileNotFoundError:
        raise PlotError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise PlotError(f"{path} is a directory, not a .out file") from None
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e.strerror or e}") from None
    except ModuleNotFoundError as e:
        raise PlotError(
            f"{path} is not a valid .out file: unpickling it needs module '{e.name}' "
            "(this project's .out files hold plain numpy arrays)"
        ) from None
    except Exception as e:  # any unpickling failure: truncated, not a pickle, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PlotError(f"{path} is not a valid .out pickle ({reason})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise PlotError(f"{path} is not a valid .out file: expected a dict with a 'metrics' dict")
    return data


def available_metrics(metrics: dict) -> list[str]:
    """Names of the plottable metrics in a `metrics` dict (everything but the times)."""
    return sorted(str(k) for k in metrics if k != TIMES_KEY)


def load_metric(path: str, metric: str = DEFAULT_METRIC) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(times, values)`` of a `.out` file: shapes ``(E,)`` and ``(E, S)``, float64."""
    return metric_values(path, load_out(path)["metrics"], metric)


def metric_values(path: str, metrics: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(times, values)`` of ``metric`` in the loaded ``metrics`` of file ``path``."""
    if metric == TIMES_KEY or metric not in metrics:
        # Older runs lack the diagnostic metrics: list what this file does have.
        names = ", ".join(available_metrics(metrics)) or "none"
        raise PlotError(f"{path} has no metric '{metric}'; it has: {names}")
    if TIMES_KEY not in metrics:
        raise PlotError(f"{path} is not a valid .out file: metrics have no '{TIMES_KEY}'")
    try:
        times = np.asarray(metrics[TIMES_KEY], dtype=np.float64).reshape(-1)
        values = _per_evaluation_array(metrics[metric], np.float64)
    except (TypeError, ValueError) as e:
        raise PlotError(
            f"{path}: metric '{metric}' is not a list of equal-length arrays ({e})"
        ) from None
    if values.shape[0] != times.shape[0]:
        raise PlotError(
            f"{path}: {values.shape[0]} '{metric}' entries but {times.shape[0]} '{TIMES_KEY}'"
        )
    if values.shape[0] == 0:
        raise PlotError(f"{path} has no evaluations")
    return times, values


def _per_evaluation_array(rows, dtype) -> np.ndarray:
    """Stack a list of per-evaluation ``(S,)`` arrays into ``(E, S)``."""
    rows = [np.asarray(v, dtype=dtype).reshape(-1) for v in rows]
    return np.stack(rows) if rows else np.zeros((0, 1), dtype=dtype)


def diverged_seeds(path: str, metrics: dict, num_seeds: int) -> np.ndarray:
    """Bool ``(S,)``: the seeds marked diverged at any evaluation (all False without the key).

    Files written before the training code recorded divergence have no ``'diverged'``: every
    seed counts as healthy there.
    """
    if DIVERGED_KEY not in metrics:
        return np.zeros(num_seeds, dtype=bool)
    try:
        flags = _per_evaluation_array(metrics[DIVERGED_KEY], bool)
    except (TypeError, ValueError) as e:
        raise PlotError(
            f"{path}: '{DIVERGED_KEY}' is not a list of equal-length arrays ({e})"
        ) from None
    if flags.shape[0] == 0:
        return np.zeros(num_seeds, dtype=bool)
    if flags.shape[1] != num_seeds:
        raise PlotError(
            f"{path}: '{DIVERGED_KEY}' has {flags.shape[1]} seeds but the metric has {num_seeds}"
        )
    return flags.any(axis=0)


def diverged_note(path: str, diverged: np.ndarray) -> str | None:
    """The stderr line saying which seeds of ``path`` are left out, or None when none are."""
    seeds = np.flatnonzero(diverged)
    if seeds.size == 0:
        return None
    if seeds.size == diverged.size:
        return f"{path}: all {diverged.size} seeds diverged; no line drawn"
    listed = ", ".join(str(s) for s in seeds)
    return f"{path}: left out {seeds.size} of {diverged.size} seeds that diverged (seeds {listed})"


def non_finite_note(path: str, metric: str, values: np.ndarray) -> str | None:
    """The stderr line counting NaN/infinite values that will leave gaps, or None.

    Evaluations where every seed is NaN are not counted: that is how the training diagnostics
    (``q_loss``, ...) record a chunk without updates, before ``training_start_time``.
    """
    bad = ~np.isfinite(values)
    no_updates = np.isnan(values).all(axis=1) if values.ndim == 2 else np.zeros(0, bool)
    count = int(np.count_nonzero(bad[~no_updates])) if values.ndim == 2 else int(bad.sum())
    if count == 0:
        return None
    return (
        f"{path}: {count} of {values.size} '{metric}' values are NaN or infinite "
        "in seeds not marked diverged; the line has gaps there"
    )


def healthy_values(path: str, metrics: dict, metric: str, values: np.ndarray):
    """``values`` without the diverged seeds' columns, plus the notes to report.

    Infinite values become NaN so that the arithmetic downstream stays quiet (inf - inf
    warns) and they show as gaps like NaN.
    """
    notes = []
    if metric != DIVERGED_KEY:  # plotting 'diverged' itself: every seed is the data
        diverged = diverged_seeds(path, metrics, values.shape[1])
        notes.append(diverged_note(path, diverged))
        values = values[:, ~diverged]
    notes.append(non_finite_note(path, metric, values))
    values = np.where(np.isfinite(values), values, np.nan)
    return values, [n for n in notes if n]


def subsample(x: np.ndarray, frequency: int) -> np.ndarray:
    """Keep every ``frequency``-th entry along axis 0, starting with the first."""
    if frequency < 1:
        raise PlotError(f"frequency must be >= 1, got {frequency}")
    return np.asarray(x)[::frequency]


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """'Valid' moving average of width ``window`` along axis 0 (N - window + 1 points).

    Works for 1-D ``(N,)`` and 2-D ``(N, S)`` arrays (each column smoothed on its own).
    """
    x = np.asarray(x, dtype=np.float64)
    if window < 1:
        raise PlotError(f"window must be >= 1, got {window}")
    if window > x.shape[0]:
        raise PlotError(f"window {window} is larger than the number of points {x.shape[0]}")
    windows = np.lib.stride_tricks.sliding_window_view(x, window, axis=0)
    return windows.mean(axis=-1)


def bootstrap_ci(
    values: np.ndarray,
    num_resamples: int = NUM_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and its percentile-bootstrap confidence interval.

    ``values`` is ``(T, S)`` (or ``(S,)``); seeds (columns) are resampled with replacement
    ``num_resamples`` times, the same resample for every time point (as seaborn does for a
    unit of observation), and the interval is the central ``confidence``% of the resampled
    means. Returns ``(mean, low, high)``, each of shape ``(T,)`` (or scalars for 1-D input).
    Deviations from the first seed are resampled (then shifted back), so identical seeds give
    exactly the seeds' value as mean and both bounds: zero width.
    """
    values = np.asarray(values, dtype=np.float64)
    one_d = values.ndim == 1
    values = np.atleast_2d(values) if one_d else values
    T, S = values.shape
    reference = values[:, 0]
    deviations = values - reference[:, None]
    mean = reference + deviations.mean(axis=1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, S, size=(num_resamples, S))
    # counts[b, s]: how often seed s is drawn in resample b; resampled mean = counts @ x / S.
    offsets = (np.arange(num_resamples) * S)[:, None]
    counts = np.bincount((idx + offsets).ravel(), minlength=num_resamples * S)
    counts = counts.reshape(num_resamples, S).astype(np.float64)
    boot = counts @ deviations.T / S  # (num_resamples, T)
    tail = (100.0 - confidence) / 2.0
    low, high = np.percentile(boot, [tail, 100.0 - tail], axis=0)
    low, high = reference + low, reference + high
    if one_d:
        return mean[0], low[0], high[0]
    return mean, low, high


def curve(
    times: np.ndarray, values: np.ndarray, window: int = 1, frequency: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Subsample, smooth and summarise one run: ``(times, mean, low, high)``."""
    times, values = subsample(times, frequency), subsample(values, frequency)
    if window > times.shape[0]:
        raise PlotError(
            f"window {window} is larger than the number of points {times.shape[0]}"
            + (f" (after keeping every {frequency}-th evaluation)" if frequency > 1 else "")
        )
    smooth_times = moving_average(times, window)
    mean, low, high = bootstrap_ci(moving_average(values, window))
    return smooth_times, mean, low, high


# --------------------------------------------------------------------------------------------
# Plotting and command line
# --------------------------------------------------------------------------------------------


def plot(
    files,
    metric: str = DEFAULT_METRIC,
    window: int = 1,
    frequency: int = 1,
    ax=None,
    warn=None,
):
    """Draw one mean line with a 95% bootstrap band per file on ``ax``; return ``ax``.

    Diverged seeds are left out of their file's line; each such fact (and any NaN gaps) is
    passed to ``warn`` (default: a line on stderr) once every file has loaded, so that an
    error in a later file is still the only line printed.
    """
    warn = warn or _print_to_stderr
    if window < 1:
        raise PlotError(f"window must be >= 1, got {window}")
    if frequency < 1:
        raise PlotError(f"frequency must be >= 1, got {frequency}")
    curves, notes = [], []
    for path in files:  # load and check everything before drawing anything
        metrics = load_out(path)["metrics"]
        times, values = metric_values(path, metrics, metric)
        values, file_notes = healthy_values(path, metrics, metric, values)
        notes += file_notes
        if values.shape[1] == 0:
            continue  # every seed diverged: nothing to draw (the note says so)
        try:
            curves.append((path, curve(times, values, window, frequency)))
        except PlotError as e:
            raise PlotError(f"{path}: {e}") from None
    for note in notes:
        warn(note)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    for path, (times, mean, low, high) in curves:
        (line,) = ax.plot(times, mean, label=label_for(path))
        ax.fill_between(times, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("time")
    ax.set_ylabel(metric)
    ax.grid(True)
    if curves:  # a legend without lines only earns a matplotlib warning
        ax.legend()
    return ax


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def can_show() -> bool:
    """True when the active matplotlib backend can open a window."""
    backend = str(matplotlib.get_backend()).lower()
    return _has_display() and backend not in _NON_INTERACTIVE_BACKENDS


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line with exit status 2 (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(name):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got '{text}'") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="plot_metric.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", "-d", nargs="+", required=True, metavar="FILE", help=".out files to plot"
    )
    parser.add_argument(
        "--window", "-w", type=_positive_int("window"), default=1, help="moving-average width"
    )
    parser.add_argument(
        "--frequency",
        "-f",
        type=_positive_int("frequency"),
        default=1,
        help="keep every f-th evaluation",
    )
    parser.add_argument(
        "--metric",
        "-m",
        default=DEFAULT_METRIC,
        help="metric to plot: reward_rates (default), or a diagnostic such as q_loss, "
        "mean_abs_q, model_loss or diverged (the fraction of seeds diverged)",
    )
    parser.add_argument("--save", "-o", metavar="PATH", help="save the figure (PNG) to PATH")
    parser.add_argument("--title", help="figure title")
    parser.add_argument("--no-show", action="store_true", help="never open a window")
    return parser


def main(argv=None) -> int:
    """Command-line entry point; returns 0, or exits with status 2 on a user error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        plot(args.data, args.metric, args.window, args.frequency, ax=ax)
        if args.title:
            ax.set_title(args.title)
        if args.save:
            try:
                fig.savefig(args.save, format="png", bbox_inches="tight")
            except OSError as e:
                raise PlotError(f"cannot save {args.save}: {e.strerror or e}") from None
            print(f"saved {args.save}")
    except PlotError as e:
        plt.close(fig)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if not args.no_show and can_show():
        plt.show()
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
