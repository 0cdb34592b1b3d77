"""Live curves: a run's evaluations sent to TensorBoard (`--tensorboard DIR`) and Weights &
Biases (`--wandb PROJECT`) as they happen, beside the `.out` file that holds the same numbers.

A `Listener` is made before the host loop trains, told of each evaluation (`evaluated`, on the
host, between chunks: never inside the compiled loop; it logs them from a thread beside the
loop) and closed at the end. Its runs: one per
seed plus one with the mean over seeds, grouped by output prefix; a grid logs one run per point
(its seeds as series inside it) unless `per_seed` asks for the per-seed runs. The x axis is
environment steps, the `.out`'s `eval_times`.

Neither library is imported unless asked for (`tracker_tensorboard.py`, `tracker_wandb.py` are
loaded by name), and a tracker never costs the run: a folder that cannot be written, a library
that is missing, a W&B that cannot be reached or is not logged in, any error while logging, is
one warning line and the run goes on without that tracker.

Resuming continues the same runs: TensorBoard's are purged from the resumed step (events a
killed run wrote past its checkpoint are dropped by TensorBoard's reader), W&B's are resumed
by the ids the checkpoint keeps (`run_ids`, `checkpoint.Progress.trackers`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import queue
import sys
import threading
import time
from typing import Any, NamedTuple

import numpy as np

from training import files, paths

WANDB_MODES = ("online", "offline")


class Trackers(NamedTuple):
    """Where a run's curves go live (the `--tensorboard`, `--wandb` flags); the default: nowhere."""

    tensorboard: str | None = None  # TensorBoard's log folder
    wandb_project: str | None = None
    wandb_mode: str = "online"
    per_seed: bool = False  # a grid: one run per (point, seed) and a mean run per point
    group: str | None = None  # what the runs are grouped under (default: the output prefix)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The live curves' flags, of every train_*.py (`cli.py`) and of the Figure 4 driver."""
    parser.add_argument("--tensorboard", metavar="DIR", help="log the curves to TensorBoard in DIR")
    parser.add_argument("--wandb", metavar="PROJECT", help="log the curves to W&B project PROJECT")
    parser.add_argument(
        "--wandb-mode",
        choices=WANDB_MODES,
        help="online (default) or offline (compute nodes without internet: `wandb sync` later)",
    )
    parser.add_argument(
        "--per-seed-runs",
        action="store_true",
        help="a grid: one tracker run per grid point and seed, and one with their mean (default: "
        "one run per point, its seeds as series in it)",
    )


def flag_error(args: argparse.Namespace) -> str | None:
    """The one line for flags that cannot go together (None: they can)."""
    if args.wandb_mode and not args.wandb:
        return "--wandb-mode: only with --wandb PROJECT"
    if args.per_seed_runs and not (args.tensorboard or args.wandb):
        return "--per-seed-runs: only with --tensorboard or --wandb"
    return None


def from_flags(args: argparse.Namespace) -> Trackers | None:
    """The `Trackers` the flags ask for (None: none)."""
    if not (args.tensorboard or args.wandb):
        return None
    mode = args.wandb_mode or "online"
    return Trackers(args.tensorboard, args.wandb, mode, args.per_seed_runs)


class RunSpec(NamedTuple):
    """One tracker run: `seed` (one seed of point `point`), `mean` (the mean over its seeds) or
    `point` (every seed of a grid point as its own series, and their mean)."""

    name: str  # the run's name: its TensorBoard folder under the log folder, its W&B name
    group: str  # W&B's group; in TensorBoard the name's folder
    kind: str  # seed, mean or point
    point: int
    seed: int | None  # the seed of a `seed` run
    config: dict  # the run's hyperparameters (the point's config, and the seed's index)


def group_name(output: str) -> str:
    """The runs of an output prefix are grouped under the prefix as typed when it lies below the
    working folder (`runs/demo`), else under its last part."""
    relative = os.path.relpath(os.path.abspath(output))
    return os.path.basename(output) if relative.startswith("..") else relative


def run_specs(
    group: str, points: list[dict], point_names: list[str], num_seeds: int, per_seed: bool
) -> list[RunSpec]:
    """The runs of a run of `points` (one config each; `point_names` their names, [] without a
    grid) and `num_seeds` seeds."""
    specs = []
    for g, point in enumerate(points):
        if point_names and not per_seed:
            name = f"{group}/{point_names[g]}"
            specs.append(RunSpec(name, group, "point", g, None, point))
            continue
        where = f"{group}/{point_names[g]}" if point_names else group
        for s in range(num_seeds):
            seed_config = {**point, "seed_index": s}
            specs.append(RunSpec(f"{where}/seed_{s}", where, "seed", g, s, seed_config))
        specs.append(RunSpec(f"{where}/mean", where, "mean", g, None, point))
    return specs


def masked_mean(values: np.ndarray, diverged: np.ndarray) -> float:
    """The mean over the seeds that have not diverged (NaN when all have), as `plot_metric.py`
    leaves diverged seeds out of its band."""
    kept = values[~diverged].astype(np.float64)
    return float(kept.mean()) if kept.size else float("nan")


def scalars(spec: RunSpec, latest: dict[str, np.ndarray], steps_per_s) -> dict[str, float]:
    """What run `spec` logs of one evaluation: `latest` holds each `.out` metric's [G, S] values
    of it (`diverged` logged as 0 / 1, in a mean as the fraction of seeds); `steps_per_s`
    (None: not known) the rate of the chunk before it."""
    diverged = latest["diverged"][spec.point]
    out = {}
    for name, values in latest.items():
        row = values[spec.point]
        if spec.kind == "seed":
            out[name] = float(row[spec.seed])
            continue
        mean = float(row.mean()) if name == "diverged" else masked_mean(row, diverged)
        if spec.kind == "mean":
            out[name] = mean
        else:
            out.update({f"{name}/seed_{s}": float(v) for s, v in enumerate(row)})
            out[f"{name}/mean"] = mean
    if steps_per_s is not None:
        out["steps_per_s"] = steps_per_s
    return out


def flat_hyperparameters(config: dict, provenance: dict) -> dict[str, Any]:
    """The config as scalars (`env_config.grid_size`), with the provenance
    (`provenance.jax`): what TensorBoard's hparams take (numbers, strings, booleans)."""
    flat = {}
    for key, value in {**config, "provenance": provenance}.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for inner, v in items:
            name = key if inner is None else f"{key}.{inner}"
            flat[name] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return flat


def warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


class Listener:
    """The host loop's listener of its evaluations: sends each to every tracker opened, from a
    thread beside the loop (a library's logging overlaps the next chunk, which runs in XLA
    without the GIL: on a GPU a chunk is a fraction of a second, W&B's 31 `log` calls of a
    30-seed run about as long); a tracker that fails is dropped with one warning line. Opened
    by `open_listener`; `flush` before a checkpoint, so that what it holds is logged."""

    def __init__(self, specs, backends: dict, saved_ids: dict, chunk_steps: int, quiet: bool):
        self.specs, self.backends, self.saved_ids = specs, backends, saved_ids
        self.chunk_steps, self.quiet = chunk_steps, quiet
        self.evaluations, self.chunk_seconds = 0, 0.0
        self.seconds = 0.0  # the thread's logging
        self.waited = 0.0  # the loop's: handing evaluations over, and `flush`
        self.open_seconds = 0.0  # opening the runs (and replaying a resumed run's evaluations)
        self.queue: queue.Queue = queue.Queue()
        self.thread = None
        if backends:
            self.thread = threading.Thread(target=self._work, name="live curves", daemon=True)
            self.thread.start()

    def evaluated(self, t: int, history: dict[str, list], chunk_seconds: float) -> None:
        """Log the evaluation at environment step `t`, the last entry of each metric of
        `history`; `chunk_seconds` the wall time of its chunk and evaluation."""
        if not self.backends:
            return
        started = time.monotonic()
        latest = {name: np.asarray(values[-1]) for name, values in history.items()}
        pairs = latest["diverged"].size
        steps_per_s = pairs * self.chunk_steps / chunk_seconds if chunk_seconds > 0 else 0.0
        self.queue.put((t, latest, steps_per_s))
        self.waited += time.monotonic() - started
        self.evaluations += 1
        self.chunk_seconds += chunk_seconds

    def _work(self) -> None:
        """The thread: logs each evaluation handed over, in order, until `close` says stop."""
        broken = False  # an error not of a tracker's own: no more logging, the runs still closed
        while (item := self.queue.get()) is not None:
            started = time.monotonic()
            try:
                if not broken:
                    self._log(self.backends, *item)
            except Exception as error:  # never a hang: the items left are only marked done
                warn(f"live curves: {first_line(error)}; training goes on without them")
                broken = True
            finally:  # `flush` and `close` wait for every item, whatever happened
                self.seconds += time.monotonic() - started
                self.queue.task_done()
        self.queue.task_done()

    def flush(self) -> None:
        """Wait until every evaluation handed over is logged."""
        if self.thread is not None:
            started = time.monotonic()
            self.queue.join()
            self.waited += time.monotonic() - started

    def replay(self, eval_times: list[int], history: dict[str, list]) -> None:
        """A resumed run's evaluations before its checkpoint, to the trackers that may have
        lost some (W&B: a killed process's last records; each tracker skips the steps its run
        holds already). Their steps per second are not known again, so not logged."""
        replaying = {n: b for n, b in self.backends.items() if getattr(b, "replays", False)}
        for i, t in enumerate(eval_times):
            latest = {name: np.asarray(values[i]) for name, values in history.items()}
            self._log(replaying, t, latest, None)

    def _log(self, backends: dict, t: int, latest: dict, steps_per_s: float | None) -> None:
        logged = [scalars(spec, latest, steps_per_s) for spec in self.specs]
        for name, backend in list(backends.items()):
            if name in self.backends:  # not dropped meanwhile
                self._call(name, lambda b=backend: b.log(t, logged))

    def run_ids(self) -> dict:
        """What the checkpoint keeps so that a resumed run continues the same runs (W&B's run
        ids); ids of a tracker not used this time are kept for the next."""
        ids = dict(self.saved_ids)
        for name, backend in self.backends.items():
            ids.update({name: backend.run_ids()} if hasattr(backend, "run_ids") else {})
        return ids

    def close(self) -> None:
        """Log what is left, stop the thread, close the trackers; then the closing line."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        for name, backend in list(self.backends.items()):
            self._call(name, backend.close)
        if self.evaluations and not self.quiet:
            share = 100 * self.waited / self.chunk_seconds if self.chunk_seconds else 0.0
            print(
                f"live curves: runs opened in {self.open_seconds:.1f} s, "
                f"{self.evaluations} evaluations logged in {self.seconds:.3f} s beside the "
                f"loop ({1000 * self.seconds / self.evaluations:.1f} ms each); the loop waited "
                f"{self.waited:.3f} s for them ({share:.3f}% of the chunks' time)",
                file=sys.stderr,
            )
        self.backends = {}

    def _call(self, name: str, call) -> None:
        try:
            call()
        except Exception as error:  # whatever the library raises: never at the run's expense
            warn(f"{name}: {first_line(error)}; training goes on without it")
            self.backends.pop(name, None)


def open_listener(
    trackers: Trackers | None, output: str, setup, progress, quiet: bool = False
) -> Listener:
    """The listener of a run (`experiment.Setup`) into `output`, which goes on from `progress`
    (`checkpoint.Progress`: a fresh run's, or its checkpoint's): opens the runs of each
    tracker asked for, continuing those of the checkpoint (its `run_ids`)."""
    started = time.monotonic()
    trackers = trackers or Trackers()
    cfg, axes = setup.cfg, setup.axes
    first_step = progress.chunks_done * cfg["eval_frequency"]
    saved_ids = progress.trackers or {}
    group = trackers.group or group_name(output)
    point_names = [paths.point_name(point, axes) for point in setup.points] if axes else []
    specs = run_specs(group, setup.points, point_names, cfg["num_seeds"], trackers.per_seed)
    hyperparameters = [flat_hyperparameters(spec.config, setup.provenance) for spec in specs]
    backends = {}
    if first_step < cfg["num_steps"]:  # else a finished run: nothing to log
        if trackers.tensorboard:
            backends["tensorboard"] = _open_tensorboard(
                trackers.tensorboard, specs, hyperparameters, first_step
            )
        if trackers.wandb_project:
            configs = [{**spec.config, "provenance": setup.provenance} for spec in specs]
            backends["wandb"] = _open_wandb(trackers, specs, configs, saved_ids.get("wandb", {}))
    opened = {name: backend for name, backend in backends.items() if backend}
    listener = Listener(specs, opened, saved_ids, cfg["eval_frequency"], quiet)
    listener.replay(progress.eval_times, progress.history)
    listener.open_seconds = time.monotonic() - started
    return listener


def _open_tensorboard(folder: str, specs, hyperparameters, first_step: int):
    try:
        files.make_writable_dir(folder)
    except OSError as error:
        warn(f"--tensorboard: cannot write {folder}: {error.strerror}; training without it")
        return None
    try:
        module = importlib.import_module("training.tracker_tensorboard")
        return module.TensorBoardRuns(folder, specs, hyperparameters, first_step)
    except Exception as error:
        warn(f"--tensorboard: {first_line(error)}; training without it")
        return None


def _open_wandb(trackers: Trackers, specs, configs, saved: dict):
    try:
        module = importlib.import_module("training.tracker_wandb")
        return module.WandbRuns(trackers.wandb_project, trackers.wandb_mode, specs, configs, saved)
    except Exception as error:  # not installed, not logged in, unreachable: W&B's own errors
        warn(f"--wandb: {first_line(error)}; training without it")
        return None
