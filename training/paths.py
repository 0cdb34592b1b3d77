"""Where a run's files are: every suffix and every prefix rule, once (no jax).

A run of output prefix `<output>` writes, for each grid point, `<point prefix>.out` and
`<point prefix>.params` (the point prefix is `<output>` itself without a grid, else
`<output>_<key>=<value>_...`, `point_prefixes`); and, for the whole run, its checkpoint
`<output>.ckpt`, the generation before it `<output>.ckpt.prev`, and the lock `<output>.lock`
held while it trains.
"""

from __future__ import annotations

OUT = ".out"  # the metrics of one grid point (`results.py`)
PARAMS = ".params"  # the parameters of one grid point (`results.py`)
CHECKPOINT = ".ckpt"  # the run's latest checkpoint (`checkpoint.py`)
PREVIOUS = ".prev"  # after a checkpoint's name: the generation before it
LOCK = ".lock"  # after the output prefix: one writer per prefix (`files.OutputLock`)


def out(prefix: str) -> str:
    return prefix + OUT


def params(prefix: str) -> str:
    return prefix + PARAMS


def checkpoint(output: str) -> str:
    return output + CHECKPOINT


def previous(checkpoint_path: str) -> str:
    """The generation a checkpoint replaced."""
    return checkpoint_path + PREVIOUS


def lock(output: str) -> str:
    return output + LOCK


def prefix_of(path: str, suffix: str = OUT) -> str:
    """`run_x.out` -> `run_x`; a path without the suffix is its own prefix."""
    return path[: -len(suffix)] if path.endswith(suffix) else path


def point_name(point: dict, axes) -> str:
    """How a grid point's output files are told apart: `alpha_adam=5e-05_softmax_temp=0.1`."""
    return "_".join(f"{name}={point[name]!r}" for name in axes)


def point_prefixes(output: str, points: list[dict], axes) -> list[str]:
    """One output prefix per grid point: `output` itself for a run without a grid, else
    `<output>_alpha_adam=5e-05_softmax_temp=0.1` and so on (`point_name`)."""
    if not axes:
        return [output]
    return [f"{output}_{point_name(point, axes)}" for point in points]


def run_files(output: str, prefixes: list[str]) -> list[str]:
    """Every file a run writes besides its lock: `.out` and `.params` of each point prefix,
    the checkpoint and the generation before it."""
    per_point = [path for p in prefixes for path in (out(p), params(p))]
    return [*per_point, checkpoint(output), previous(checkpoint(output))]
