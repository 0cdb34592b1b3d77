"""A hyperparameter grid's points, one `.out` file each: which config keys are its axes, whether
the files are one grid, the points ranked, and what the ranking should warn about. No jax, no
matplotlib: `sweep_summary.py` reports and draws it, the Figure 4 driver's `select` stage takes
its best point.

The grid axes are the config keys whose values differ between the files and that change what a
run learns (traced keys, and across separate runs shape keys); they must be numbers, and every
other such key must agree. Keys that only the host loop reads (`training/schema.py`) are never
axes."""

from __future__ import annotations

import itertools
import numbers

from scoring import Point, Run, load_run, rank, score_point
from training.results import ResultsError
from training.schema import HOST_ONLY_KEYS, is_number, same_value, setting


class GridError(ResultsError):
    """Files that are not one grid: one line on stderr, exit status 2."""


def find_axes(runs: list[Run]) -> list[str]:
    """The config keys whose values differ between runs, in the first config's key order,
    less those only the host loop reads (`host_only_differences` names them).

    Raises GridError when a differing key is not a number in every file (or is missing from
    some, and has no default to read it as: a file written before a key existed ran at the
    key's default), since such files are not points of one numeric grid.
    """
    keys = list(runs[0].config)
    keys += sorted({k for run in runs for k in run.config} - set(keys))
    axes = []
    for key in (k for k in keys if k not in HOST_ONLY_KEYS):
        values = [setting(run.config, key) for run in runs]
        lacking = [
            r for r, v in zip(runs, values, strict=True) if key not in r.config and v is None
        ]
        if lacking:
            holder = next(run for run in runs if key in run.config)
            raise GridError(
                f"not one grid: '{key}' is in {holder.path} but not in {lacking[0].path}"
            )
        if all(same_value(values[0], v) for v in values[1:]):
            continue
        if not all(is_number(v) for v in values):
            other = next(
                (run, v)
                for run, v in zip(runs, values, strict=True)
                if not same_value(values[0], v)
            )
            raise GridError(
                f"not one grid: '{key}' differs ({values[0]!r} in {runs[0].path}, "
                f"{other[1]!r} in {other[0].path}); only numeric keys may vary"
            )
        axes.append(key)
    return axes


def host_only_differences(runs: list[Run]) -> dict[str, list]:
    """Host-only keys (run length, saving, checkpoints, seed, ...) whose values differ between
    the runs, each with the values found: not axes, but worth saying."""
    keys = sorted({k for run in runs for k in run.config} & HOST_ONLY_KEYS)
    differing = {}
    for key in keys:
        values = [run.config.get(key) for run in runs]
        distinct = []
        for value in values:
            if not any(same_value(value, seen) for seen in distinct):
                distinct.append(value)
        if len(distinct) > 1:
            differing[key] = distinct
    return differing


def check_distinct_points(runs: list[Run], axes: list[str]) -> None:
    """Two files at the same grid point are two runs mixed up, not one grid: refuse them."""
    seen = {}
    for run in runs:
        coords = tuple(run.config[a] for a in axes)
        if coords in seen:
            where = " ".join(f"{a}={format_value(v)}" for a, v in zip(axes, coords, strict=True))
            raise GridError(
                f"{seen[coords]} and {run.path} are the same grid point"
                + (f" ({where})" if where else " (identical configs)")
            )
        seen[coords] = run.path


def axis_values(runs: list[Run], axis: str) -> list:
    """The distinct values tried along ``axis``, ascending."""
    return sorted({run.config[axis] for run in runs})


def format_value(value) -> str:
    """A config value as the user wrote it: repr of a float (5e-05, 0.1), str of an int."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return str(value)


def edge_warnings(best: Point, runs: list[Run], axes: list[str]) -> list[str]:
    """One warning per axis on which the best point sits at the smallest or largest value."""
    warnings = []
    for axis, value in zip(axes, best.coords, strict=True):
        tried = axis_values(runs, axis)
        if value == tried[-1]:
            side = "largest"
        elif value == tried[0]:
            side = "smallest"
        else:
            continue
        warnings.append(
            f"warning: best {axis} is the {side} value tried ({format_value(value)}): "
            "extend the grid"
        )
    return warnings


def missing_points(runs: list[Run], axes: list[str]) -> list[tuple]:
    """Coordinates of the full grid (every combination of axis values) that no file holds."""
    present = {tuple(run.config[a] for a in axes) for run in runs}
    grid = itertools.product(*(axis_values(runs, a) for a in axes))
    return [coords for coords in grid if coords not in present]


def uneven_evaluations_warning(runs: list[Run]) -> str | None:
    """Runs stopped at different evaluations score different stretches of training: say so."""
    counts = sorted({run.num_evaluations for run in runs})
    if len(counts) == 1:
        return None
    return (
        f"warning: runs have {counts[0]} to {counts[-1]} evaluations; "
        "unfinished runs score only the start of training, so compare finished runs"
    )


def summarise(paths: list[str], metric: str, minimize: bool, axes: list[str] | None = None):
    """Load, check, score and rank: ``(runs, axes, ranked points)``; raises ResultsError. The
    axes are found from the configs (`find_axes`) unless the caller knows them (a grid run's
    own, as the Figure 4 driver does)."""
    runs = [load_run(path, metric) for path in paths]
    axes = find_axes(runs) if axes is None else list(axes)
    check_distinct_points(runs, axes)
    ranked = rank([score_point(run, axes) for run in runs], minimize)
    return runs, axes, ranked
