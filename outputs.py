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


def write_pickle_atomic(path: str, obj: Any) -> None:
    write_atomic(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def per_seed_numpy(tree: Any, num_seeds: int) -> list:
    """A tree with a leading seed axis -> a list of per-seed trees of numpy arrays."""
    host = jax.device_get(tree)
    return [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), host) for i in range(num_seeds)]


def save_params(path: str, agent, learner, num_seeds: int) -> None:
    saved = agent.saved_params(learner)  # field selection: the seed axis stays in front
    write_pickle_atomic(path, {name: per_seed_numpy(p, num_seeds) for name, p in saved.items()})


def out_record(cfg: dict, reward_rates: list, eval_times: list) -> dict:
    return {
        "config": types.SimpleNamespace(**cfg),
        "metrics": {"reward_rates": list(reward_rates), "eval_times": list(eval_times)},
    }
