"""Output files (SPEC sections 10-11): `<output>.out` and `<output>.params`, plain numpy pickles
written atomically, so a reader or a killed run only ever sees a complete file."""

from __future__ import annotations

import os
import pickle
import tempfile
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# The process's umask: reading it means setting it, so it is set back at once.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """`write(file)` into a temporary file beside `path`, then rename: a reader (or a killed
    run) only ever sees the old file or the complete new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        # The permissions of an ordinary new file, not mkstemp's 0600.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(prefix: str) -> None:
    """Raise `OSError` unless files can be created beside `prefix` (as `write_atomic` does)."""
    directory = os.path.dirname(os.path.abspath(prefix))
    with tempfile.NamedTemporaryFile(dir=directory, prefix=os.path.basename(prefix) + "."):
        pass


def write_pickle_atomic(path: str, obj: Any) -> None:
    write_atomic(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def save_params(paths: list[str], agent, learner) -> None:
    """`<output>.params` of every grid point (`paths[g]`): `{'Q': [params of seed 0, 1, ...]}`,
    plus `'model'` for the model agents, as numpy arrays (SPEC §11)."""
    saved = jax.device_get(agent.saved_params(learner))  # leaves [G, S, ...]
    num_seeds = jax.tree.leaves(saved)[0].shape[1]
    for g, path in enumerate(paths):
        per_seed = {
            name: [
                jax.tree.map(lambda x, i=(g, s): np.asarray(x[i]), tree) for s in range(num_seeds)
            ]
            for name, tree in saved.items()
        }
        write_pickle_atomic(path, per_seed)


def out_record(cfg: dict, eval_times: list[int], history: dict[str, list], g: int) -> dict:
    """The `.out` record of grid point `g` (SPEC §11): its config of scalars, and each metric
    of `history` (one [G, S] array per evaluation) as one [S] array per evaluation.
    `reward_rates` and `eval_times` come first, as in the reference's files."""
    metrics = {"reward_rates": [], "eval_times": list(eval_times)}
    for name, values in history.items():
        # Fresh copies: every array pickles alike (writable), wherever it came from (a device,
        # a checkpoint), so a resumed run writes the same bytes as an uninterrupted one.
        metrics[name] = [np.array(v[g]) for v in values]
    return {"config": types.SimpleNamespace(**cfg), "metrics": metrics}
