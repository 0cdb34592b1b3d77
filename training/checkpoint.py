"""Checkpoints: everything a killed run needs to go on exactly where it was (`--resume`).

A checkpoint is one numpy archive, `<output>.ckpt`, written atomically (`files.write_atomic`):
every leaf of the training state of every (grid point, seed) pair (network and optimiser
states, target and model parameters, replay buffers, environment states, observations, keys),
the host's progress (chunks done, steps since the last `.params`, the metrics so far), the
config it was written with and what produced it (`provenance`). The checkpoint before it is
kept beside it as `<output>.ckpt.prev`, so a damaged latest one is not the end of a run. It
loads with numpy alone, on another machine or another day, and is placed back onto the devices
of the run that resumes it. Why numpy archives and not orbax-checkpoint: README "Checkpoints".
"""

from __future__ import annotations

import glob
import json
import os
import zipfile
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from training import paths, provenance
from training.files import write_atomic
from training.schema import MAY_CHANGE_ON_RESUME, same_value, setting

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: the message is one line saying why."""


class DamagedError(CheckpointError):
    """A file that is not a whole checkpoint: truncated, empty, flipped bits, another file."""


class Progress(NamedTuple):
    """The host's part of a run, which a checkpoint keeps beside the training state."""

    chunks_done: int
    steps_since_save: int  # environment steps since `.params` was last written
    eval_times: list[int]
    history: dict[str, list[np.ndarray]]  # metric -> one [G, S] array per evaluation
    trackers: dict | None = None  # the live curves' run ids (`trackers.Listener.run_ids`)

    @classmethod
    def start(cls, metric_names) -> Progress:
        return cls(0, 0, [], {name: [] for name in metric_names})


class Restored(NamedTuple):
    leaves: list[np.ndarray]  # the training state's leaves, in `jax.tree.leaves` order
    progress: Progress
    path: str  # the file it came from: the latest checkpoint, or the one before it
    note: str | None  # a line for the log when it is not the latest
    provenance: dict  # what produces the resumed run: this run's, and any before it


def _json(cfg: dict) -> dict:
    return json.loads(json.dumps(cfg))


def save(path: str, cfg: dict, state: Any, progress: Progress, produced_by: dict) -> None:
    """Write the checkpoint of `state` (on the devices) and `progress` atomically, keeping the
    one it replaces as `paths.previous(path)`. The one before that goes first, so the disk holds
    two checkpoints, and while the new one is written, the latest and the new one."""
    leaves, treedef = jax.tree.flatten(state)
    arrays = {f"state_{i:04d}": np.asarray(x) for i, x in enumerate(jax.device_get(leaves))}
    for name, values in progress.history.items():
        arrays[f"history_{name}"] = np.asarray(values)  # [E, G, S]
    meta = {
        "format": FORMAT,
        "config": _json(cfg),
        "provenance": produced_by,
        "chunks_done": progress.chunks_done,
        "steps_since_save": progress.steps_since_save,
        "eval_times": progress.eval_times,
        "history": list(progress.history),
        "trackers": progress.trackers or {},
        "state_tree": str(treedef),
    }
    arrays["meta"] = np.array(json.dumps(meta))
    previous = paths.previous(path)
    if os.path.exists(previous):
        os.remove(previous)
    write_atomic(path, lambda f: np.savez(f, **arrays), keep=previous)


def exists(path: str) -> bool:
    """There is a checkpoint to go on from: the latest, or the one before it."""
    return os.path.exists(path) or os.path.exists(paths.previous(path))


def refuse_start_over(path: str, cfg: dict) -> None:
    """A run started without `--resume` over an existing checkpoint would replace it, and the
    one before it, at its first save: raise `CheckpointError` naming the checkpoint's step, so
    that the user says which is meant (`--resume`, or `--restart`)."""
    for candidate in (path, paths.previous(path)):
        if not os.path.lexists(candidate):
            continue
        step = _step_of(candidate)
        where = (
            f"holds a run at step {step}"
            if step is not None  # a damaged one is still someone's checkpoint
            else "is a checkpoint (damaged: its step cannot be read)"
        )
        raise CheckpointError(
            f"{candidate} {where} of {cfg['num_steps']}: starting again would replace it; go on "
            "from it with --resume, or start again from step 0 with --restart"
        )


def steps_done(path: str) -> int:
    """Environment steps the latest whole checkpoint (or the one before it) has done, 0 without
    one; reads its metadata only, for a driver watching a run from outside."""
    for candidate in (path, paths.previous(path)):
        step = _step_of(candidate)
        if step is not None:
            return step
    return 0


def _step_of(path: str) -> int | None:
    """The environment step a checkpoint file holds, from its metadata alone; None when the
    file is missing or its step cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            meta = json.loads(str(saved["meta"]))
        return int(meta["chunks_done"]) * int(meta["config"]["eval_frequency"])
    except (OSError, EOFError, KeyError, TypeError, ValueError, RecursionError, zipfile.BadZipFile):
        return None


def load(
    path: str,
    cfg: dict,
    state_shapes: Any,
    produced_by: dict,
    accept_version_change=False,
    metrics: tuple[str, ...] | None = None,
) -> Restored:
    """Read the latest checkpoint, or the one before it when the latest is damaged or missing,
    and check that `cfg` and this code can resume it: raises `CheckpointError` naming the first
    difference, or naming both files when neither is whole. `state_shapes`: the training
    state's `jax.ShapeDtypeStruct`s for `cfg` (`compilation.state_shapes`); `produced_by`: this
    run's `provenance.record`, which must be the checkpoint's unless `accept_version_change`
    (the restored provenance then records both, `provenance.resumed`); `metrics`: the names of
    the run's metrics, which the checkpoint's history must hold exactly. A file whose metadata
    is not what `save` writes (a field of another type, out of range, or disagreeing with the
    arrays or the config) is damaged, like a truncated one."""
    damaged = []
    for candidate in (path, paths.previous(path)):
        if not os.path.exists(candidate):
            continue
        try:
            meta, arrays = _read(candidate)
            _check_format(candidate, meta)
            contents = _checked_contents(candidate, meta, arrays, cfg, state_shapes, metrics)
        except DamagedError as error:
            damaged.append(str(error))
            continue
        leaves, progress = contents
        _check_config(candidate, meta["config"], _json(cfg), meta["chunks_done"])
        _check_provenance(candidate, meta["provenance"], produced_by, accept_version_change)
        _check_state(candidate, meta["state_tree"], leaves, state_shapes)
        step = progress.chunks_done * cfg["eval_frequency"]
        note = None
        if candidate != path:
            why = damaged[0] if damaged else f"there is no {path}"
            note = f"warning: {why}; going on from the one before it, {candidate} (step {step})"
        mixed = provenance.resumed(meta["provenance"], produced_by, step)
        return Restored(leaves, progress, candidate, note, mixed)
    raise CheckpointError(
        f"no whole checkpoint to go on from: {'; '.join(damaged)}; delete them to start again "
        "from step 0, or put back a copy"
    )


def _read(path: str) -> tuple[dict, dict]:
    """The metadata and arrays of a checkpoint file, every array read (so every CRC checked);
    `DamagedError` when the file is not a whole checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
    except Exception as error:  # whatever a damaged file makes numpy raise
        raise DamagedError(f"{path} is damaged ({_damage(error)})") from None
    if not isinstance(meta, dict):
        raise DamagedError(f"{path} is damaged (its metadata is not an object)")
    return meta, arrays


def _check_format(path: str, meta: dict) -> None:
    """A checkpoint of another format is not damaged, but cannot be read by this code."""
    if "format" not in meta:
        raise DamagedError(f"{path} is damaged (its metadata has no format)")
    if meta["format"] != FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {meta['format']!r}, not {FORMAT}")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Field(NamedTuple):
    """One field of a checkpoint's metadata: its JSON type, and what else must hold of it
    (`agrees(value, meta, context)`: None, or what is wrong), checked in table order, so a
    check may rely on the fields above it."""

    name: str
    is_type: Callable[[Any], bool]
    type_name: str
    agrees: Callable[[Any, dict, _Context], str | None] = lambda value, meta, context: None


class _Context(NamedTuple):
    """What a checkpoint's metadata must agree with: the config and the state's leading axes."""

    eval_frequency: int
    num_points: int
    num_seeds: int
    metrics: tuple[str, ...] | None


def _chunks_done(value, meta, context) -> str | None:
    if value < 1:  # `save` writes after a chunk
        return f"expected at least 1, got {value}"
    return None


def _steps_since_save(value, meta, context) -> str | None:
    most = meta["chunks_done"] * context.eval_frequency
    if not 0 <= value <= most:
        return f"expected 0 to {most} (the steps run), got {value}"
    return None


def _eval_times(value, meta, context) -> str | None:
    if len(value) != meta["chunks_done"]:  # first: a huge chunks_done builds no list
        return f"expected one per chunk done ({meta['chunks_done']}), got {len(value)}"
    expected = [i * context.eval_frequency for i in range(meta["chunks_done"])]
    if value != expected:
        return f"expected the {meta['chunks_done']} chunks' start steps, got {_short(value)}"
    return None


def _history(value, meta, context) -> str | None:
    if not all(isinstance(name, str) for name in value) or len(set(value)) != len(value):
        return f"expected distinct metric names, got {_short(value)}"
    expected = context.metrics
    if expected is not None and sorted(value) != sorted(expected):
        return f"expected the metrics {sorted(expected)}, got {_short(value)}"
    return None


def _provenance(value, meta, context) -> str | None:
    if not all(isinstance(key, str) for key in value):
        return "expected names of versions"
    return None


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Every field `save` writes, as `save` writes it. A new field is one row (and one line of
# `save`); a field that older checkpoints lack needs a default in `_DEFAULTS`.
FIELDS = (
    Field("config", lambda v: isinstance(v, dict), "an object"),
    Field("provenance", lambda v: isinstance(v, dict), "an object", _provenance),
    Field("chunks_done", _int, "an integer", _chunks_done),
    Field("steps_since_save", _int, "an integer", _steps_since_save),
    Field("eval_times", lambda v: isinstance(v, list), "a list", _eval_times),
    Field("history", lambda v: isinstance(v, list), "a list", _history),
    Field("state_tree", lambda v: isinstance(v, str), "a string"),
    Field("trackers", lambda v: isinstance(v, dict), "an object"),
)
# Written since format 1 began (provenance) or since the live curves (trackers): older files
# lack them.
_DEFAULTS = {"provenance": {}, "trackers": {}}


def _checked_contents(path, meta, arrays, cfg, state_shapes, metrics):
    """The state's leaves and the host's progress, once every field of `meta` is of its type,
    in its range, and agrees with the arrays beside it and with `cfg`; else `DamagedError`."""
    shapes = jax.tree.leaves(state_shapes)
    num_points, num_seeds = shapes[0].shape[:2] if shapes and shapes[0].ndim >= 2 else (1, 1)
    context = _Context(cfg["eval_frequency"], num_points, num_seeds, metrics)
    for field in FIELDS:
        value = meta.setdefault(field.name, _DEFAULTS.get(field.name, _MISSING))
        if value is _MISSING:
            raise DamagedError(f"{path} is damaged (its metadata has no {field.name})")
        problem = (
            None if field.is_type(value) else f"expected {field.type_name}, got {_short(value)}"
        )
        problem = problem or field.agrees(value, meta, context)
        if problem:
            raise DamagedError(f"{path} is damaged (its {field.name}: {problem})")
    leaves = [arrays.get(f"state_{i:04d}") for i in range(len(shapes))]
    if any(leaf is None for leaf in leaves):
        missing = next(i for i, leaf in enumerate(leaves) if leaf is None)
        raise DamagedError(f"{path} is damaged (no state_{missing:04d} in it)")
    chunks = meta["chunks_done"]
    history = {}
    for name in meta["history"]:
        values = arrays.get(f"history_{name}")
        dtype = np.dtype(bool) if name == "diverged" else np.dtype(np.float32)
        want = (chunks, num_points, num_seeds)
        if values is None or values.shape != want or values.dtype != dtype:
            got = "nothing" if values is None else f"{values.dtype}{list(values.shape)}"
            raise DamagedError(
                f"{path} is damaged (history_{name}: expected {dtype}{list(want)}, got {got})"
            )
        # Native dtypes, as a fresh run's arrays have: pickled `.out` files then match byte for
        # byte.
        history[name] = [x.astype(x.dtype.name) for x in values]
    trackers = meta["trackers"]
    progress = Progress(chunks, meta["steps_since_save"], meta["eval_times"], history, trackers)
    return leaves, progress


_MISSING = object()


def _damage(error: Exception) -> str:
    """What a damaged file's error says, in words a user can act on."""
    if isinstance(error, EOFError):
        return "empty or cut short"
    if isinstance(error, zipfile.BadZipFile):
        return f"not a whole archive: {error}"
    if isinstance(error, ValueError) and "pickle" in str(error):
        return "not a numpy archive"
    if isinstance(error, KeyError):
        return f"no {error} in it"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _check_provenance(path: str, saved: dict, current: dict, accept: bool) -> None:
    changed = provenance.differences(saved, current)
    if changed and not accept:
        raise CheckpointError(
            f"{path} was written by another version ({', '.join(changed)}): going on would mix "
            "two versions in one run; start again from step 0 with --restart, or pass "
            "--accept-version-change to go on knowingly"
        )


def _check_config(path: str, saved: dict, current: dict, chunks_done: int) -> None:
    # Only the run's length (to extend a finished run) and how often it checkpoints may change:
    # anything else would make the resumed run a different experiment.
    for key in sorted(set(saved) | set(current)):
        was, now = setting(saved, key), setting(current, key)
        if key not in MAY_CHANGE_ON_RESUME and not same_value(was, now):
            raise CheckpointError(
                f"{key}: the checkpoint {path} was written with {key}={json.dumps(was)}, the "
                f"config has {json.dumps(now)} "
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
    """Delete a run's checkpoints, both generations (a finished tune grid's: select needs only
    its `.out` files)."""
    for generation in (path, paths.previous(path)):
        if os.path.exists(generation):
            os.remove(generation)
