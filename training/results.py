"""The `.out` format (design §11), reader beside writer, and the `.params` files.

`<output>.out` is a pickle of `{'config': types.SimpleNamespace(**config), 'metrics':
{'reward_rates': [array (S,) per evaluation], 'eval_times': [int per evaluation], ...},
'provenance': {...}}`, the reference's layout plus what produced it. Everything that reads
results goes through `load_out` (`plot_metric.py`, `sweep_summary.py`, the Figure 4 driver), and
through `load_params` for `.params`: both unpickle with `SafeUnpickler`, which builds only what
these files hold (numpy arrays and scalars, `types.SimpleNamespace`, plain containers and
numbers, and the jax arrays of the reference's own files, rebuilt as numpy arrays), so a file
from elsewhere cannot run code when it is read.

Per-seed views of a metric (`metric_values`) and the seeds that diverged (`diverged_seeds`) live
here too; the statistics over seeds are `scoring.py`'s. This module imports numpy and the
standard library only: no jax, and no scipy, since every training run imports it.
"""

from __future__ import annotations

import codecs
import operator
import pickle
import types

import numpy as np

from training.files import write_pickle_atomic

TIMES_KEY = "eval_times"
DIVERGED_KEY = "diverged"
DEFAULT_METRIC = "reward_rates"
PROVENANCE_KEY = "provenance"


class ResultsError(Exception):
    """A results file that cannot be used: the message is one line naming the file."""


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def out_record(
    cfg: dict, eval_times: list[int], history: dict[str, list], g: int, provenance=None
) -> dict:
    """The `.out` record of grid point `g` (design §11): its config of scalars, and each metric
    of `history` (one [G, S] array per evaluation) as one [S] array per evaluation.
    `reward_rates` and `eval_times` come first, as in the reference's files."""
    metrics = {DEFAULT_METRIC: [], TIMES_KEY: list(eval_times)}
    for name, values in history.items():
        # Fresh copies: every array pickles alike (writable), wherever it came from (a device,
        # a checkpoint), so a resumed run writes the same bytes as an uninterrupted one.
        metrics[name] = [np.array(v[g]) for v in values]
    record = {"config": types.SimpleNamespace(**cfg), "metrics": metrics}
    if provenance is not None:
        record[PROVENANCE_KEY] = dict(provenance)
    return record


def write_out(path: str, record: dict) -> None:
    write_pickle_atomic(path, record)


def params_of_point(saved: dict, g: int) -> dict:
    """`.params` of grid point `g` (design §11) from the host copy of every pair's saved
    parameters (`Agent.saved_params`, leaves [G, S, ...]): `{'Q': [params of seed 0, 1, ...]}`,
    plus `'model'` for the model agents, as numpy arrays."""

    def seed_tree(tree, s):
        if isinstance(tree, dict):
            return {name: seed_tree(value, s) for name, value in tree.items()}
        return np.asarray(tree[g, s])

    num_seeds = _first_leaf(saved).shape[1]
    return {name: [seed_tree(tree, s) for s in range(num_seeds)] for name, tree in saved.items()}


def _first_leaf(tree):
    while isinstance(tree, dict):
        tree = next(iter(tree.values()))
    return tree


def write_params(paths: list[str], saved: dict) -> None:
    """`<output>.params` of every grid point (`paths[g]`), see `params_of_point`."""
    for g, path in enumerate(paths):
        write_pickle_atomic(path, params_of_point(saved, g))


# --------------------------------------------------------------------------------------------
# Reading: results are data, never code
# --------------------------------------------------------------------------------------------


def _jax_array(fun, args, array_state, aval_state):
    """A pickled jax array (`jax.Array.__reduce__`) rebuilt as the numpy array it holds."""
    array = fun(*args)
    array.__setstate__(array_state)
    return array


def _latin1(text, encoding="latin1"):
    """`codecs.encode` as protocol-2 pickles use it for bytes (latin-1 only)."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"codecs.encode with {encoding!r}")
    return codecs.encode(text, encoding)


# What `.out` and `.params` files hold: numpy arrays, scalars and dtypes (numpy 2's and 1's
# module names), protocol 2's bytes, `SimpleNamespace`, and the reference's jax arrays (jax
# >= 0.4: `_reconstruct_array`; older `DeviceArray`s pickle as `operator.pos` of the array).
_NUMPY = {
    "ndarray": np.ndarray,
    "dtype": np.dtype,
    "_reconstruct": np._core.multiarray._reconstruct,
    "scalar": np._core.multiarray.scalar,
    "_frombuffer": np._core.numeric._frombuffer,
}
_NUMPY_MODULES = (
    "numpy",
    "numpy._core.multiarray",
    "numpy._core.numeric",
    "numpy.core.multiarray",
    "numpy.core.numeric",
)
ALLOWED = {
    ("types", "SimpleNamespace"): types.SimpleNamespace,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1,
    ("jax._src.array", "_reconstruct_array"): _jax_array,
    ("_operator", "pos"): operator.pos,
    ("operator", "pos"): operator.pos,
    **{(module, name): value for module in _NUMPY_MODULES for name, value in _NUMPY.items()},
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only the types in `ALLOWED`: anything else (a class whose
    `__reduce__` calls `os.system`, say) is refused before it is called."""

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"refused type {printable(f'{module}.{name}')}")


def load_pickle(path: str, kind: str = ".out"):
    """Unpickle a results file with `SafeUnpickler`; raise `ResultsError` with one line."""
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f).load()
    except FileNotFoundError:
        raise ResultsError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ResultsError(f"{path} is a directory, not a {kind} file") from None
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror or e}") from None
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused type"):
            raise ResultsError(
                f"{path}: {e}: a {kind} file holds only numpy arrays, numbers, strings and "
                "SimpleNamespace; not loaded"
            ) from None
        raise ResultsError(f"{path} is not a valid {kind} pickle ({_first_line(e)})") from None
    except Exception as e:  # any unpickling failure: truncated, not a pickle, ...
        raise ResultsError(f"{path} is not a valid {kind} pickle ({_first_line(e)})") from None


def _first_line(error: Exception) -> str:
    return printable(str(error).splitlines()[0]) if str(error) else type(error).__name__


def printable(text: str) -> str:
    """`text` from a file, with its control characters escaped: a vertical tab or a form feed in
    a name a damaged pickle holds would split the one line a refusal prints (found by
    `tests/test_fuzz.py`)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def load_out(path: str) -> dict:
    """Load a `.out` file and check its structure; raise `ResultsError` with a clear reason."""
    data = load_pickle(path, ".out")
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise ResultsError(
            f"{path} is not a valid .out file: expected a dict with a 'metrics' dict"
        )
    return data


def load_params(path: str) -> dict:
    """Load a `.params` file: `{'Q': [params per seed], ...}` of numpy arrays."""
    data = load_pickle(path, ".params")
    if not isinstance(data, dict):
        raise ResultsError(f"{path} is not a valid .params file: expected a dict")
    return data


def out_config(record: dict) -> dict:
    """The config a `.out` record holds, as a dict ({} when it holds none)."""
    config = record.get("config")
    return dict(vars(config)) if isinstance(config, types.SimpleNamespace) else {}


# --------------------------------------------------------------------------------------------
# Per-seed views
# --------------------------------------------------------------------------------------------


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
        raise ResultsError(f"{path} has no metric '{metric}'; it has: {names}")
    if TIMES_KEY not in metrics:
        raise ResultsError(f"{path} is not a valid .out file: metrics have no '{TIMES_KEY}'")
    try:
        times = np.asarray(metrics[TIMES_KEY], dtype=np.float64).reshape(-1)
        values = per_evaluation_array(metrics[metric], np.float64)
    except (TypeError, ValueError) as e:
        raise ResultsError(
            f"{path}: metric '{metric}' is not a list of equal-length arrays ({e})"
        ) from None
    if values.shape[0] != times.shape[0]:
        raise ResultsError(
            f"{path}: {values.shape[0]} '{metric}' entries but {times.shape[0]} '{TIMES_KEY}'"
        )
    if values.shape[0] == 0:
        raise ResultsError(f"{path} has no evaluations")
    if values.shape[1] == 0:  # a curve of no seeds would be drawn as nothing, without a word
        raise ResultsError(f"{path} has no seeds: '{metric}' holds empty arrays")
    return times, values


def per_evaluation_array(rows, dtype) -> np.ndarray:
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
        flags = per_evaluation_array(metrics[DIVERGED_KEY], bool)
    except (TypeError, ValueError) as e:
        raise ResultsError(
            f"{path}: '{DIVERGED_KEY}' is not a list of equal-length arrays ({e})"
        ) from None
    if flags.shape[0] == 0:
        return np.zeros(num_seeds, dtype=bool)
    if flags.shape[1] != num_seeds:
        raise ResultsError(
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
