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

Reading the files (safely: a `.out` file cannot run code), the per-seed arrays and the diverged
seeds are the `.out` format's own (`training/results.py`); the smoothing and the band are
`curves.py`'s (the band's interval `scoring.py`'s); this script draws, saves and shows. It
imports no jax, so it runs anywhere numpy, scipy and matplotlib do. On a machine without a
display `main` selects matplotlib's non-interactive 'Agg' backend (`select_backend`) and never
opens a window.
"""

from __future__ import annotations

import argparse
import sys

import matplotlib.pyplot as plt

from curves import can_show, draw_curve, file_curve, select_backend
from training.files import save_png_atomic
from training.flags import OneLineErrorParser, positive_int
from training.results import DEFAULT_METRIC, ResultsError


class PlotError(ResultsError):
    """A user-facing error: reported as one line on stderr with exit status 2 (as is a
    `ResultsError` of a file that cannot be read)."""


# --------------------------------------------------------------------------------------------
# Plotting and command line
# --------------------------------------------------------------------------------------------


def plain_text(text: str) -> str:
    """`text` as matplotlib draws it literally: a `$` would start its mathtext (and an unpaired
    one fail to parse)."""
    return text.replace("$", r"\$")


def label_for(path: str) -> str:
    """Legend label of a file: its path without the `.out` suffix."""
    return plain_text(path[: -len(".out")] if path.endswith(".out") else path)


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
        summary, file_notes = file_curve(path, metric, window, frequency)
        notes += file_notes
        if summary is not None:
            curves.append((path, summary))
    for note in notes:
        warn(note)
    if ax is None:
        _, ax = plt.subplots()
    for path, summary in curves:
        draw_curve(ax, summary, label_for(path))
    ax.set_xlabel("time")
    ax.set_ylabel(metric)
    ax.grid(True)
    if curves:  # a legend without lines only earns a matplotlib warning
        ax.legend()
    return ax


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="plot_metric.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", "-d", nargs="+", required=True, metavar="FILE", help=".out files to plot"
    )
    parser.add_argument(
        "--window", "-w", type=positive_int("window"), default=1, help="moving-average width"
    )
    parser.add_argument(
        "--frequency",
        "-f",
        type=positive_int("frequency"),
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
    select_backend()
    fig, ax = plt.subplots()
    try:
        plot(args.data, args.metric, args.window, args.frequency, ax=ax)
        if args.title:
            ax.set_title(plain_text(args.title))
        if args.save:
            try:
                save_png_atomic(args.save, fig, bbox_inches="tight")
            except OSError as e:
                raise PlotError(f"cannot save {args.save}: {e.strerror or e}") from None
            print(f"saved {args.save}")
    except ResultsError as e:
        plt.close(fig)
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if not args.no_show and can_show():
        plt.show()
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
