"""A training run from the command line (SPEC sections 1, 9-11): the entry point of every
`train_<agent>.py`.

config file -> validated config (`config.py`) -> the loop of `loop.py`, jitted and sharded over
the devices (`compilation.py`) -> greedy evaluation after each chunk -> `<output>.out` (and
`<output>.params`) written atomically (`outputs.py`), and `<output>.ckpt` to resume from
(`checkpoint.py`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import checkpoint
import config
import environments
from compilation import check_memory, compile_run, enable_compilation_cache, state_shapes
from loop import Agent
from outputs import check_writable, out_record, save_params, write_pickle_atomic


def parse_args(agent_type: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"Train the {agent_type} agent.")
    parser.add_argument("--seed", "-s", type=int, default=0, help="master PRNG seed")
    parser.add_argument("--config", "-c", required=True, help="path to a JSON config")
    parser.add_argument("--output", "-o", default=agent_type, help="output prefix")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or logs")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on from the checkpoint <output>.ckpt of an interrupted run (if there is one)",
    )
    return parser.parse_args(argv)


def output_prefixes(output: str, points: list[dict], axes) -> list[str]:
    """One output prefix per grid point: `output` itself for a run without a grid, else
    `<output>_alpha_adam=5e-05_softmax_temp=0.1` and so on (`config.point_name`)."""
    if not axes:
        return [output]
    return [f"{output}_{config.point_name(point, axes)}" for point in points]


def pair_label(points: list[dict], axes, g: int, s: int) -> str:
    return f"seed {s}" + (f" of {config.point_name(points[g], axes)}" if axes else "")


class OutputSchedule:
    """When to rewrite the `.out` files: after every evaluation (Q8), unless writing them took
    over 2% of the time since the last write (a long run of a large grid: every file grows with
    every evaluation), then as often as that 2% allows; always after the last evaluation."""

    def __init__(self):
        self.last_end, self.last_cost = 0.0, 0.0

    def due(self, last: bool) -> bool:
        return last or time.monotonic() - self.last_end >= 50 * self.last_cost

    def written(self, started: float) -> None:
        self.last_end = time.monotonic()
        self.last_cost = self.last_end - started


def train(
    agent: Agent,
    env,
    cfg: dict,
    seed: int,
    output: str,
    quiet: bool = False,
    program_dir: str | None = None,
    resume: bool = False,
) -> list[dict]:
    """The whole run of every grid point (one, for a config without lists); returns the `.out`
    record of each point as last written. `program_dir`: see `compile_run`. With `resume`, the
    run goes on from `<output>.ckpt` when there is one. Raises, before anything compiles,
    `ConfigError` when the training state cannot fit in memory (`check_memory`), and
    `CheckpointError` when the checkpoint cannot be resumed (`checkpoint.load`)."""
    from tqdm import tqdm

    points, axes = config.grid_points(cfg), config.grid_axes(cfg)
    prefixes = output_prefixes(output, points, axes)
    num_seeds, chunk_steps = cfg["num_seeds"], cfg["eval_frequency"]
    num_chunks = cfg["num_steps"] // chunk_steps
    checkpoint_path = f"{output}.ckpt"
    shapes = state_shapes(agent, env, len(points), num_seeds)
    memory = check_memory(shapes)  # raises ConfigError, before anything compiles
    if not quiet:
        print(memory, file=sys.stderr)
    restored = None
    if resume and os.path.exists(checkpoint_path):
        restored = checkpoint.load(checkpoint_path, cfg, shapes)
        checkpoint.remove_partial_files([output, *prefixes])
    elif resume and not quiet:
        print(f"--resume: no checkpoint {checkpoint_path}; starting at step 0", file=sys.stderr)
    run = compile_run(agent, env, cfg, len(points), program_dir=program_dir)
    hp = config.grid_hyperparameters(points)
    init_key, eval_key = jax.random.split(jax.random.PRNGKey(seed))
    if restored is None:
        state = run.init(jax.random.split(init_key, num_seeds))
        metrics = ("reward_rates", *agent.diagnostics, "diverged")
        progress = checkpoint.Progress.start(metrics)  # each: one [G, S] array per evaluation
    else:
        state = checkpoint.place(restored.leaves, shapes, run.pairs)
        progress = restored.progress

    history, eval_times = progress.history, progress.eval_times
    steps_since_save, steps_since_checkpoint = progress.steps_since_save, 0
    schedule = OutputSchedule()
    first = progress.chunks_done  # 0, or where the checkpoint left off
    chunks = range(first, num_chunks)
    bar = tqdm(chunks, initial=first, total=num_chunks, disable=quiet, dynamic_ncols=True)
    for i in bar:
        t0 = i * chunk_steps
        if cfg["save_params"] and steps_since_save >= cfg["save_frequency"]:
            save_params([f"{p}.params" for p in prefixes], agent, state.learner)
            steps_since_save = 0
        train_now = t0 >= cfg["training_start_time"]
        state, report = run.chunk(state, jnp.int32(t0), jnp.bool_(train_now), hp)
        keys = jax.random.split(jax.random.fold_in(eval_key, i), num_seeds)
        scores = np.asarray(run.evaluate(state.learner, keys, hp), dtype=np.float32)
        record_evaluation(history, scores, jax.device_get(report), points, axes, i, t0)
        eval_times.append(t0)
        steps_since_save += chunk_steps
        steps_since_checkpoint += chunk_steps
        last = i == num_chunks - 1
        if schedule.due(last):
            started = time.monotonic()
            for g, prefix in enumerate(prefixes):
                write_pickle_atomic(f"{prefix}.out", out_record(points[g], eval_times, history, g))
            schedule.written(started)
        if last or steps_since_checkpoint >= checkpoint.checkpoint_every(cfg):
            progress = checkpoint.Progress(i + 1, steps_since_save, eval_times, history)
            checkpoint.save(checkpoint_path, cfg, state, progress)
            steps_since_checkpoint = 0
        show_progress(bar, quiet, t0 + chunk_steps, scores, points, axes)
    if cfg["save_params"]:
        save_params([f"{p}.params" for p in prefixes], agent, state.learner)
    return [out_record(points[g], eval_times, history, g) for g in range(len(points))]


def record_evaluation(history: dict, scores, report, points, axes, i: int, t0: int) -> None:
    """Append one evaluation's [G, S] metrics to `history`; say which pairs just diverged."""
    diverged = history["diverged"][-1] if history["diverged"] else np.zeros(scores.shape, bool)
    for g, s in zip(*np.nonzero(report.nonfinite & ~diverged), strict=True):
        print(
            f"warning: {pair_label(points, axes, g, s)} diverged: non-finite Q values or "
            f"losses in the chunk before evaluation {i} (t={t0}); the other seeds go on",
            file=sys.stderr,
        )
    history["reward_rates"].append(scores)
    for name, value in report.diagnostics.items():
        history[name].append(np.asarray(value, np.float32))
    history["diverged"].append(diverged | report.nonfinite)


def show_progress(bar, quiet: bool, t: int, scores: np.ndarray, points, axes) -> None:
    """The bar shows the mean return over seeds (of the best grid point); the log, each seed's
    return (of the best point)."""
    means = np.nanmean(scores, axis=1) if np.isfinite(scores).any() else np.zeros(len(points))
    best = int(np.argmax(means))
    if axes:
        bar.set_postfix(time=t, best=f"{config.point_name(points[best], axes)} {means[best]:.3f}")
    else:
        bar.set_postfix(time=t, mean_return=f"{means[best]:.3f}")
    if not quiet:
        where = f" (best point {config.point_name(points[best], axes)})" if axes else ""
        bar.write(f"t={t} returns{where}: " + " ".join(f"{s:.3f}" for s in scores[best]))


def main(agent_type: str, build_agent: Callable[[dict, Any], Agent], argv=None) -> list[dict]:
    """Entry point of every `train_*.py`: parse flags, validate the config before anything is
    compiled (exit status 2 with one line on a bad config), then train."""
    args = parse_args(agent_type, argv)
    try:
        cfg = config.load_config(args.config, agent_type)
    except config.ConfigError as error:
        fail(args.config, error)
    cfg = {**cfg, "agent_type": agent_type, "seed": args.seed}
    try:  # a run that cannot write its outputs must not find out after training
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        check_writable(args.output)
    except OSError as error:
        print(f"--output: cannot write {args.output!r}: {error.strerror}", file=sys.stderr)
        sys.exit(2)
    program_dir = enable_compilation_cache()
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    start = time.time()
    agent = build_agent(cfg, env)
    try:
        records = train(
            agent, env, cfg, args.seed, args.output, args.quiet, program_dir, args.resume
        )
    except config.ConfigError as error:  # the memory check
        fail(args.config, error)
    except checkpoint.CheckpointError as error:
        print(f"--resume: {error}", file=sys.stderr)
        sys.exit(2)
    if not args.quiet:
        steps = cfg["num_steps"] * cfg["num_seeds"] * len(records)
        elapsed = time.time() - start
        print(
            f"done: {steps} env steps in {elapsed:.1f} s ({steps / elapsed:.0f} steps/s, "
            f"all seeds and grid points, compilation included)",
            file=sys.stderr,
        )
    return records


def fail(config_path: str, error: Exception):
    print(f"{config_path}: config error: {error}", file=sys.stderr)
    sys.exit(2)
