"""Rank the points of a hyperparameter grid and draw their scores (one `.out` file per point).

Usage::

    python sweep_summary.py --data ER_*.out [--metric reward_rates] [--save heatmap.png]
                            [--minimize] [--no-show]

A grid run writes one `.out` file per grid point, e.g. ``ER_alpha_adam=5e-05_softmax_temp=0.1
.out``, whose config holds that point's values. The grid axes are the config keys whose values
differ between the files and that change what a run learns: traced keys (step sizes,
temperatures, ...: what one compiled grid varies) and, across separate runs, shape keys (e.g.
``num_hidden_units``). They must be numbers, and every other such key (``agent_type``,
``environment``, ...) must agree, or the files are not one grid. Keys that only the host loop
reads (``num_steps``, ``checkpoint_frequency``, ``seed``, ...; `training/schema.py`) are never
axes: a note names those that differ.

Score of a point: for each seed, the mean of the metric over all evaluations (the area under
its learning curve divided by its length); the point's score is the mean over seeds, with a 95%
percentile-bootstrap interval over seeds (`scoring.bootstrap_ci`, fixed RNG seed, so the output
is deterministic). Beside it, as "Deep RL at the edge of the statistical precipice" (Agarwal et
al., 2021) recommends: the interquartile mean (IQM) of the seeds' scores and the probability
that a seed of the best point scores better than a seed of this one, P(best better), each with
its 95% bootstrap interval (`scoring.py`); a P(best better) near 0.5 means the grid does not
tell the two apart. Seeds that diverged (the file's ``'diverged'`` record) stay in the score,
since their returns are what the agent achieved, but are counted in the table.

Output: a table ranked best first (highest score, or lowest with ``--minimize`` for losses),
the best point, and a warning when the best value of an axis is the smallest or largest value
tried. With two axes a heat map of the score is saved, with one axis a line plot; the default
path is the files' common name prefix + ``_summary.png`` (``ER_summary.png``).

The files are read by the `.out` format's own module (`training/results.py`), found to be one
grid and ranked by `grids.py`, and scored by `scoring.py`; like `plot_metric.py` this imports no
jax, and opens a window only when a display exists and ``--no-show`` is not given
(`curves.select_backend`, called in `main`).
"""

from __future__ import annotations

import os
import sys

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

import scoring
from curves import can_show, select_backend
from grids import (
    axis_values,
    edge_warnings,
    format_value,
    host_only_differences,
    missing_points,
    summarise,
    uneven_evaluations_warning,
)
from scoring import Point, Run, number_format
from training.files import save_png_atomic
from training.flags import OneLineErrorParser
from training.results import DEFAULT_METRIC, ResultsError

PROG = "sweep_summary.py"
MAX_MISSING_LISTED = 5
MAX_TICK_CHARS = 9  # about what fits under one heat-map cell


class SweepError(ResultsError):
    """A picture that cannot be saved: one line on stderr, exit status 2."""


# --------------------------------------------------------------------------------------------
# Ticks
# --------------------------------------------------------------------------------------------


def tick_labels(values: list) -> list[str]:
    """Axis labels: values as given when short, else 4 significant digits if still distinct.

    Exact powers of two such as 2**-13 print as 0.0001220703125, which would overlap their
    neighbours; the table keeps the exact values.
    """
    exact = [format_value(v) for v in values]
    short = [
        e if len(e) <= MAX_TICK_CHARS else f"{float(v):.4g}"
        for v, e in zip(values, exact, strict=True)
    ]
    return short if len(set(short)) == len(short) else exact


def _set_ticks(axis, positions, values) -> None:
    """Ticks at ``positions`` labelled with ``values``; slanted when a label is still long."""
    labels = tick_labels(values)
    axis.set_ticks(positions, labels)
    if max(len(label) for label in labels) > MAX_TICK_CHARS:
        for label in axis.get_ticklabels():
            label.set(rotation=30, horizontalalignment="right")


# --------------------------------------------------------------------------------------------
# Text report
# --------------------------------------------------------------------------------------------


def against_best(runs: list[Run], ranked: list[Point], minimize: bool = False) -> dict:
    """Per point (by path): the interquartile mean of its seeds' scores, and the probability
    that a seed of the best point scores better than one of this point (`scoring`'s statistics,
    each with its 95% bootstrap interval; None for the best point itself)."""
    scores = {run.path: run.finite_scores for run in runs}
    best = scores[ranked[0].path]
    sign = -1.0 if minimize else 1.0  # lower is better: compare the negated scores
    found = {}
    for p in ranked:
        own = scores[p.path]
        # as many resamples as the score's interval: a 110-point grid in seconds
        iqm = scoring.mean_and_iqm([own], scoring.NUM_BOOTSTRAP)[1] if own.size else None
        vs = None
        if p.path != ranked[0].path and own.size and best.size:
            vs = scoring.improvement([(sign * best, sign * own)], scoring.NUM_BOOTSTRAP)
        found[p.path] = (iqm, vs)
    return found


def format_table(
    ranked: list[Point], axes: list[str], runs: list[Run] | None = None, minimize: bool = False
) -> str:
    """The ranking as aligned text columns: rank, axis values, score and its interval, with
    `runs` also the IQM and its interval and P(best better) (`against_best`), seeds, diverged."""
    fmt = number_format(ranked)
    compared = against_best(runs, ranked, minimize) if runs else {}
    header = ["rank", *axes, "score", "95% interval"]
    header += ["IQM", "95% interval", "P(best better) [95%]"] if compared else []
    header += ["seeds", "diverged"]
    rows = [header]
    for i, p in enumerate(ranked, start=1):
        seeds = (
            str(p.num_seeds) if p.num_seeds == p.total_seeds else f"{p.num_seeds}/{p.total_seeds}"
        )
        cells = [
            str(i),
            *(format_value(v) for v in p.coords),
            fmt.format(p.score),
            f"[{fmt.format(p.low)}, {fmt.format(p.high)}]",
        ]
        if compared:
            iqm, vs = compared[p.path]
            cells += _iqm_cells(iqm, fmt) + [_probability_cell(vs, i == 1)]
        cells += [seeds, "n/a" if p.num_diverged is None else str(p.num_diverged)]
        rows.append(cells)
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _iqm_cells(iqm: scoring.Estimate | None, fmt: str) -> list[str]:
    if iqm is None:
        return ["nan", ""]
    if not np.isfinite(iqm.low):  # one seed: nothing to resample
        return [fmt.format(iqm.value), "n/a"]
    return [fmt.format(iqm.value), f"[{fmt.format(iqm.low)}, {fmt.format(iqm.high)}]"]


def _probability_cell(vs: scoring.Estimate | None, is_best: bool) -> str:
    if is_best:
        return "(best)"
    if vs is None:
        return "n/a"
    interval = f"[{vs.low:.2f}, {vs.high:.2f}]" if np.isfinite(vs.low) else "[n/a]"
    return f"{vs.value:.2f} {interval}"


def best_line(best: Point, axes: list[str], fmt: str) -> str:
    """``best: a=1 b=2 score -12.3 [-13.0, -11.6] (file.out)``."""
    where = " ".join(f"{a}={format_value(v)}" for a, v in zip(axes, best.coords, strict=True))
    summary = f"score {fmt.format(best.score)} [{fmt.format(best.low)}, {fmt.format(best.high)}]"
    return f"best: {where + ' ' if where else ''}{summary} ({best.path})"


def report_lines(
    runs: list[Run], axes: list[str], ranked: list[Point], minimize: bool = False
) -> list[str]:
    """Everything printed to stdout, in order: table, best point, warnings, missing points."""
    lines = [
        format_table(ranked, axes, runs, minimize),
        best_line(ranked[0], axes, number_format(ranked)),
    ]
    lines += edge_warnings(ranked[0], runs, axes) if np.isfinite(ranked[0].score) else []
    for p in ranked:
        if p.num_seeds < p.total_seeds:
            lines.append(
                f"note: {p.path}: {p.total_seeds - p.num_seeds} of {p.total_seeds} seeds have "
                "a NaN or infinite score and are left out of its mean"
            )
    uneven = uneven_evaluations_warning(runs)
    lines += [uneven] if uneven else []
    for key, values in host_only_differences(runs).items():
        shown = ", ".join(format_value(v) for v in values)
        lines.append(f"note: the runs differ in {key} ({shown}), which is not a grid axis")
    missing = missing_points(runs, axes)
    if missing:
        listed = "; ".join(
            " ".join(f"{a}={format_value(v)}" for a, v in zip(axes, c, strict=True))
            for c in missing[:MAX_MISSING_LISTED]
        )
        more = (
            f" and {len(missing) - MAX_MISSING_LISTED} more"
            if len(missing) > MAX_MISSING_LISTED
            else ""
        )
        has = "grid point has" if len(missing) == 1 else "grid points have"
        blank = " (blank in the heat map)" if len(axes) == 2 else ""
        lines.append(f"note: {len(missing)} {has} no file{blank}: {listed}{more}")
    return lines


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------


def default_save_path(paths: list[str], config_keys=()) -> str:
    """Common file-name prefix before the first ``key=value`` + ``_summary.png``, next to them.

    ``ER_alpha_adam=5e-05_softmax_temp=0.1.out`` and its siblings give ``ER_summary.png``. The
    prefix is cut before the first ``_<config key>=`` it contains (keys hold underscores too,
    so the last ``_`` before ``=`` would cut ``alpha_adam`` in half).
    """
    names = [_stem(os.path.basename(p)) for p in paths]
    prefix = os.path.commonprefix(names)
    starts = [prefix.find(f"_{key}=") for key in config_keys]
    starts = [i for i in starts if i >= 0]
    if starts:
        prefix = prefix[: min(starts)]
    elif "=" in prefix:  # keys unknown: cut at the last '_' before the first '='
        prefix = prefix[: prefix.rfind("_", 0, prefix.index("="))]
    prefix = prefix.rstrip("_-. ") or "sweep"
    folders = {os.path.dirname(p) for p in paths}
    folder = folders.pop() if len(folders) == 1 else ""
    return os.path.join(folder, f"{prefix}_summary.png")


def _stem(name: str) -> str:
    return name[: -len(".out")] if name.endswith(".out") else name


def figure_title(runs: list[Run], metric: str) -> str:
    config = runs[0].config
    agent, env = config.get("agent_type", "?"), config.get("environment", "?")
    return f"{agent} on {env}: {metric} averaged over training"


def score_grid(points: list[Point], x_values: list, y_values: list) -> np.ndarray:
    """``(len(y), len(x))`` scores, NaN where the grid has no file (drawn blank)."""
    grid = np.full((len(y_values), len(x_values)), np.nan)
    for p in points:
        grid[y_values.index(p.coords[1]), x_values.index(p.coords[0])] = p.score
    return grid


def diverged_grid(points: list[Point], x_values: list, y_values: list) -> np.ndarray:
    """``(len(y), len(x))`` counts of diverged seeds (0 where unknown or missing)."""
    grid = np.zeros((len(y_values), len(x_values)), dtype=int)
    for p in points:
        grid[y_values.index(p.coords[1]), x_values.index(p.coords[0])] = p.num_diverged or 0
    return grid


def draw_heatmap(points, runs, axes, best, metric, title, fmt, ax):
    """Score of each (x = first axis, y = second axis) cell, annotated, the best one outlined."""
    x_values, y_values = axis_values(runs, axes[0]), axis_values(runs, axes[1])
    grid = np.ma.masked_invalid(score_grid(points, x_values, y_values))
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(grid, cmap=cmap, origin="lower", aspect="auto")
    colorbar = ax.figure.colorbar(image, ax=ax)
    colorbar.set_label(f"{metric} (mean over evaluations and seeds)")
    diverged = diverged_grid(points, x_values, y_values)
    for (row, col), score in np.ndenumerate(grid.filled(np.nan)):
        if not np.isfinite(score):
            continue  # a missing point stays blank
        text = fmt.format(score)
        if diverged[row, col]:  # the researcher should see unstable points at a glance
            text += f"\n{diverged[row, col]} diverged"
        color = _text_color(image, score)
        ax.text(col, row, text, ha="center", va="center", color=color, fontsize=9)
    if np.isfinite(best.score):
        col, row = x_values.index(best.coords[0]), y_values.index(best.coords[1])
        ax.add_patch(
            Rectangle(
                (col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=3, label="best"
            )
        )
    _set_ticks(ax.xaxis, range(len(x_values)), x_values)
    ax.yaxis.set_ticks(range(len(y_values)), tick_labels(y_values))
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title)
    return ax


def _text_color(image, value: float) -> str:
    """Black on light cells, white on dark ones, so every annotation is readable."""
    r, g, b, _ = image.cmap(image.norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def draw_line(points, axes, best, metric, title, ax):
    """Score ± interval against the single axis; log x when positive values span > 10x."""
    ordered = sorted(points, key=lambda p: p.coords[0])
    x = np.array([float(p.coords[0]) for p in ordered])
    score = np.array([p.score for p in ordered])
    yerr = np.array([[p.score - p.low for p in ordered], [p.high - p.score for p in ordered]])
    ax.errorbar(x, score, yerr=yerr, marker="o", capsize=4, label="score, 95% interval")
    if np.isfinite(best.score):
        ax.plot(
            [float(best.coords[0])],
            [best.score],
            marker="*",
            markersize=16,
            color="red",
            linestyle="none",
            label="best",
        )
    if np.all(x > 0) and x.max() > 10 * x.min():
        ax.set_xscale("log")
        ax.minorticks_off()  # the values tried are the ticks, not decades
    _set_ticks(ax.xaxis, x, [p.coords[0] for p in ordered])
    ax.set_xlabel(axes[0])
    ax.set_ylabel(f"{metric} (mean over evaluations and seeds)")
    ax.set_title(title)
    ax.grid(True)
    ax.legend()
    return ax


def draw(points, runs, axes, best, metric):
    """The figure for 1 or 2 axes; None (no picture) otherwise."""
    title, fmt = figure_title(runs, metric), number_format(points)
    if len(axes) == 2:
        nx, ny = len(axis_values(runs, axes[0])), len(axis_values(runs, axes[1]))
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * nx + 3.0), max(4.5, 0.6 * ny + 2.5)))
        draw_heatmap(points, runs, axes, best, metric, title, fmt, ax)
        return fig
    if len(axes) == 1:
        fig, ax = plt.subplots(figsize=(7.0, 4.5))
        draw_line(points, axes, best, metric, title, ax)
        return fig
    return None


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser():
    parser = OneLineErrorParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", "-d", nargs="+", required=True, metavar="FILE", help="the grid's .out files"
    )
    parser.add_argument("--metric", "-m", default=DEFAULT_METRIC, help="metric to score")
    parser.add_argument(
        "--save", "-o", metavar="PATH", help="picture path (default: <common prefix>_summary.png)"
    )
    parser.add_argument(
        "--minimize", action="store_true", help="lower is better (for losses): rank lowest first"
    )
    parser.add_argument("--no-show", action="store_true", help="never open a window")
    return parser


def save_figure(fig, path: str) -> None:
    try:
        save_png_atomic(path, fig, bbox_inches="tight", dpi=120)
    except OSError as e:
        raise SweepError(f"cannot save {path}: {e.strerror or e}") from None


def main(argv=None) -> int:
    """Command-line entry point; returns 0, or exits with status 2 on a user error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    select_backend()
    try:
        runs, axes, ranked = summarise(args.data, args.metric, args.minimize)
    except ResultsError as e:
        parser.exit(2, f"{PROG}: error: {e}\n")
    print("\n".join(report_lines(runs, axes, ranked, args.minimize)))
    fig = draw(ranked, runs, axes, ranked[0], args.metric)
    if fig is None:
        kind = "a 1-point grid" if not axes else f"{len(axes)} axes ({', '.join(axes)})"
        ignored = "; --save ignored" if args.save else ""
        print(f"no picture for {kind}: a heat map needs 2 axes, a line plot 1{ignored}")
        return 0
    path = args.save or default_save_path(args.data, runs[0].config)
    try:
        save_figure(fig, path)
    except SweepError as e:
        plt.close(fig)
        parser.exit(2, f"{PROG}: error: {e}\n")
    print(f"saved {path}")
    if not args.no_show and can_show():
        plt.show()
    plt.close(fig)
    return 0


if __name__ == "__main__":
    sys.exit(main())
