"""Checkpoints: everything a killed run needs to go on exactly where it was (`--resume`).

A checkpoint is one numpy archive, `<output>.ckpt`, written atomically (`outputs.write_atomic`):
every leaf of the training state of every (grid point, seed) pair (network and optimiser
states, target and model parameters, replay buffers, environment states, observations, keys),
the host's progress (chunks done, steps since the last `.params`, the metrics so far) and the
config it was written with. It loads with numpy alone, on another machine or another day, and
is placed back onto the devices of the run that resumes it. Why numpy archives and not
orbax-checkpoint: README "Checkpoints".
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from training.files import write_atomic
from training.schema import MAY_CHANGE_ON_RESUME, same_value

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: the message is one line saying why."""


class Progress(NamedTuple):
    """The host's part of a run, which a checkpoint keeps beside the training state."""

    chunks_done: int
    steps_since_save: int  # environment steps since `.params` was last written
    eval_times: list[int]
    history: dict[str, list[np.ndarray]]  # metric -> one [G, S] array per evaluation

    @classmethod
    def start(cls, metric_names) -> Progress:
        return cls(0, 0, [], {name: [] for name in metric_names})


class Restored(NamedTuple):
    leaves: list[np.ndarray]  # the training state's leaves, in `jax.tree.leaves` order
    progress: Progress


def _json(cfg: dict) -> dict:
    return json.loads(json.dumps(cfg))


def save(path: str, cfg: dict, state: Any, progress: Progress) -> None:
    """Write the checkpoint of `state` (on the devices) and `progress` atomically."""
    leaves, treedef = jax.tree.flatten(state)
    arrays = {f"state_{i:04d}": np.asarray(x) for i, x in enumerate(jax.device_get(leaves))}
    for name, values in progress.history.items():
        arrays[f"history_{name}"] = np.asarray(values)  # [E, G, S]
    meta = {
        "format": FORMAT,
        "config": _json(cfg),
        "chunks_done": progress.chunks_done,
        "steps_since_save": progress.steps_since_save,
        "eval_times": progress.eval_times,
        "history": list(progress.history),
        "state_tree": str(treedef),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    write_atomic(path, lambda f: np.savez(f, **arrays))


def load(path: str, cfg: dict, state_shapes: Any) -> Restored:
    """Read a checkpoint and check that `cfg` and this code can resume it: raises
    `CheckpointError` naming the first difference. `state_shapes`: the training state's
    `jax.ShapeDtypeStruct`s for `cfg` (`compilation.state_shapes`)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({error})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {meta.get('format')}, not {FORMAT}")
    _check_config(path, meta["config"], _json(cfg), meta["chunks_done"])
    leaves = [arrays[f"state_{i:04d}"] for i in range(len(jax.tree.leaves(state_shapes)))]
    _check_state(path, meta["state_tree"], leaves, state_shapes)
    # Native dtypes, as a fresh run's arrays have: pickled `.out` files then match byte for byte.
    history = {
        name: [x.astype(x.dtype.name) for x in arrays[f"history_{name}"]]
        for name in meta["history"]
    }
    progress = Progress(meta["chunks_done"], meta["steps_since_save"], meta["eval_times"], history)
    return Restored(leaves, progress)


def _check_config(path: str, saved: dict, current: dict, chunks_done: int) -> None:
    # Only the run's length (to extend a finished run) and how often it checkpoints may change:
    # anything else would make the resumed run a different experiment.
    for key in sorted(set(saved) | set(current)):
        if key not in MAY_CHANGE_ON_RESUME and not same_value(saved.get(key), current.get(key)):
            raise CheckpointError(
                f"{key}: the checkpoint {path} was written with {key}="
                f"{json.dumps(saved.get(key))}, the config has {json.dumps(current.get(key))} "
                f"(only {' and '.join(sorted(MAY_CHANGE_ON_RESUME))} may change when resuming)"
            )
    done = chunks_done * current["eval_frequency"]
    if done > current["num_steps"]:
        raise CheckpointError(
            f"num_steps: the checkpoint {path} is at step {done}, beyond num_steps "
            f"{current['num_steps']}"
        )


def _check_state(path: str, saved_tree: str, leaves, state_shapes) -> None:
    """The saved state must have this code's layout (agent, shapes, dtypes)."""
    shapes = jax.tree.leaves(state_shapes)
    same = saved_tree == str(jax.tree.structure(state_shapes)) and all(
        x.shape == s.shape and x.dtype == s.dtype for x, s in zip(leaves, shapes, strict=True)
    )
    if not same:
        raise CheckpointError(
            f"{path}: the saved training state does not have this code's layout "
            "(written by another version of the agent?)"
        )


def place(leaves: list[np.ndarray], state_shapes: Any, sharding) -> Any:
    """The restored leaves as the training state, on the run's devices."""
    treedef = jax.tree.structure(state_shapes)
    return jax.tree.unflatten(treedef, [jax.device_put(x, sharding) for x in leaves])


def remove_partial_files(prefixes: list[str]) -> None:
    """Temporary files that a killed run left half-written (`write_atomic`'s, never renamed)."""
    for prefix in prefixes:
        for suffix in ("out", "params", "ckpt"):
            for tmp in glob.glob(f"{glob.escape(prefix)}.{suffix}.*.tmp"):
                os.unlink(tmp)


def remove(path: str) -> None:
    """Delete a run's checkpoint (a finished tune grid's: select needs only its `.out` files)."""
    if os.path.exists(path):
        os.remove(path)
