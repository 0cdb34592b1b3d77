"""A training run: `run`, the one way into one (SPEC sections 1, 9-11), and the command line of
every `train_<agent>.py` (`main`), which calls it.

config (a dict, or a JSON file) -> validated config (`config.py`) -> the loop of `loop.py`,
jitted and sharded over the devices (`compilation.py`) -> greedy evaluation after each chunk ->
`<output>.out` (and `<output>.params`) written atomically (`results.py`), and `<output>.ckpt` to
resume from (`checkpoint.py`). The benchmark times the compiled pieces of the same `prepare`d
run (`measure.py`).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import environments
from agents import HParams
from training import checkpoint, config, files, provenance, results
from training.cli import MAX_SEED, OneLineErrorParser, number
from training.compilation import (
    CompiledRun,
    check_memory,
    compile_run,
    enable_compilation_cache,
    evaluation_bytes,
    metrics_bytes,
    state_shapes,
    temporaries_bytes,
)
from training.loop import Agent
from training.schema import checkpoint_every

BuildAgent = Callable[[dict, Any], Agent]  # (validated config, environment) -> the agent


class RunError(Exception):
    """A run that cannot start or go on: the message is the one line the command line prints,
    and `status` its exit status."""

    def __init__(self, line: str, status: int = 2):
        super().__init__(line)
        self.status = status


class RunInterruptedError(RunError):
    """A run stopped by a signal at the end of a chunk, its checkpoint written (`StopSignals`):
    `--resume` goes on from there. Its status is the shell's for that signal (128 + number)."""

    def __init__(self, line: str, signum: int):
        super().__init__(line, 128 + signum)
        self.signum = signum


class Setup(NamedTuple):
    """A run before anything is compiled or written: its validated config (with `agent_type`
    and `seed`), environment, agent, grid points and the shapes of its training state."""

    cfg: dict
    env: Any
    agent: Agent
    points: list[dict]  # one config of scalars per grid point ([cfg] without a grid)
    axes: dict[str, list]  # the grid's axes ({} without a grid)
    hp: HParams  # the traced hyperparameters of every point, leaves [G]
    shapes: Any  # the training state's `jax.ShapeDtypeStruct`s, axes [G, S] in front
    metrics: int  # host bytes of the run's metrics (`compilation.metrics_bytes`)
    evaluation: int  # bytes the evaluation holds at once (`compilation.evaluation_bytes`)
    warnings: list[str]  # lines for a config that cannot do what it seems to say
    provenance: dict  # what produces the run's files (`provenance.record`)


class Written(NamedTuple):
    """What a run wrote."""

    outs: list[str]  # one `.out` per grid point
    records: list[dict]  # their records, as last written
    params: list[str]  # the `.params` files ([] without save_params)
    checkpoint: str
    chunks_run: int  # chunks trained by this call (0: it found the run finished)


def prepare(agent_type: str, build_agent: BuildAgent, cfg, seed: int = 0) -> Setup:
    """Validate `cfg` (a dict, or the path of a JSON file), build the environment and the
    agent, and check that the training state fits in memory: all before anything compiles.
    Raises `RunError` with one line naming the key and what was expected."""
    where = f"{cfg}: " if isinstance(cfg, str) else ""
    try:
        if isinstance(cfg, str):
            cfg = config.load_config(cfg, agent_type)
        else:
            cfg = config.validate_config(cfg, agent_type)
        cfg = {**cfg, "agent_type": agent_type, "seed": seed}
        env = environments.make_environment(cfg["environment"], cfg["env_config"])
        agent = build_agent(cfg, env)
        num_points = config.grid_size(cfg)  # sizes are checked before a point is built
        shapes = state_shapes(agent, env, num_points, cfg["num_seeds"])
        evaluations = cfg["num_steps"] // cfg["eval_frequency"]
        metrics = metrics_bytes(evaluations, num_points, cfg["num_seeds"], len(agent.diagnostics))
        evaluation = evaluation_bytes(env, cfg, num_points)
        # before compiling; again after (`compile_chunk`)
        check_memory(shapes, metrics=metrics, evaluation=evaluation)
        points, axes = config.grid_points(cfg), config.grid_axes(cfg)
    except config.ConfigError as error:
        raise RunError(f"{where}config error: {error}") from None
    hp = config.grid_hyperparameters(points)
    produced_by = provenance.record(jax.devices()[0].device_kind)
    warnings = config.warnings(cfg)
    return Setup(
        cfg, env, agent, points, axes, hp, shapes, metrics, evaluation, warnings, produced_by
    )


def compile_setup(setup: Setup, program_dir: str | None = None, agent=None) -> CompiledRun:
    """The run's jitted functions (`compilation.compile_run`); `agent` replaces the setup's
    (the benchmark times a variant of it)."""
    agent = setup.agent if agent is None else agent
    return compile_run(agent, setup.env, setup.cfg, len(setup.points), program_dir=program_dir)


def run_keys(seed: int, num_seeds: int) -> tuple[jax.Array, jax.Array]:
    """(initial-state keys [S], the evaluations' key) of a run of master seed `seed`."""
    init_key, eval_key = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.split(init_key, num_seeds), eval_key


def run(
    agent_type: str,
    build_agent: BuildAgent,
    cfg,
    output: str,
    *,
    seed: int = 0,
    resume: bool = False,
    quiet: bool = False,
    accept_version_change: bool = False,
    restart: bool = False,
) -> Written:
    """Train `cfg` (a dict, or the path of a JSON file) for the agent into files named
    `<output>.out` (one per grid point, `<output>_<point>.out`), `.params` and `.ckpt`; with
    `resume`, go on from `<output>.ckpt` when there is one (`accept_version_change`: even if
    another version of the code or libraries wrote it); with `restart`, start again from step
    0 over an existing checkpoint, which a run with neither refuses. The run holds
    `<output>.lock` while it trains. Raises `RunError`, whose message is the one line the
    command line prints, before anything compiles when it can; `RunInterruptedError` when a
    signal stopped it at the end of a chunk."""
    start = time.time()
    if resume and restart:
        raise RunError("--resume and --restart: give one (go on, or start again from step 0)")
    program_dir = enable_compilation_cache()  # before anything compiles, even a PRNG key
    setup = prepare(agent_type, build_agent, cfg, seed)
    for line in setup.warnings:
        print(line, file=sys.stderr)
    prefixes = output_prefixes(output, setup.points, setup.axes)
    written_files = [f"{p}.{suffix}" for p in prefixes for suffix in ("out", "params")]
    written_files += [f"{output}.ckpt", checkpoint.previous_path(f"{output}.ckpt")]
    try:
        files.check_output(output, written_files)
        with files.OutputLock(output):
            start_over(f"{output}.ckpt", setup.cfg, resume, restart)
            written = train(setup, output, quiet, program_dir, resume, accept_version_change)
    except files.OutputError as error:
        raise RunError(str(error)) from None
    if not quiet and written.chunks_run == 0:
        print(
            f"finished already: {written.checkpoint} holds all {setup.cfg['num_steps']} steps; "
            "its .out written again from it, nothing trained",
            file=sys.stderr,
        )
    elif not quiet:
        steps = setup.cfg["num_steps"] * setup.cfg["num_seeds"] * len(setup.points)
        elapsed = time.time() - start
        print(
            f"done: {steps} env steps in {elapsed:.1f} s ({steps / elapsed:.0f} steps/s, "
            f"all seeds and grid points, compilation included)",
            file=sys.stderr,
        )
    return written


def start_over(checkpoint_path: str, cfg: dict, resume: bool, restart: bool) -> None:
    """A run without `--resume` over an existing checkpoint is refused in one line, unless
    `--restart` says to start again: then the checkpoints go first."""
    if restart:
        checkpoint.remove(checkpoint_path)
    elif not resume:
        try:
            checkpoint.refuse_start_over(checkpoint_path, cfg)
        except checkpoint.CheckpointError as error:
            raise RunError(str(error)) from None


class StopSignals:
    """While a run trains, SIGINT (Ctrl-C), SIGTERM (a scheduler's preemption or `scancel`)
    and SIGUSR2 (SLURM's warning before a time limit, submitit's signal) ask it to stop at the
    end of the chunk it is in, once its checkpoint is written; a second Ctrl-C stops at once.
    The handlers found before are put back afterwards. Python takes signals in its main thread
    only: elsewhere nothing is installed."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        print(
            f"{signal.Signals(signum).name}: stopping at the end of this chunk, once its "
            "checkpoint is written",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


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
    every evaluation), then as often as that 2% allows. The run writes them after its last
    evaluation in any case."""

    def __init__(self):
        self.last_end, self.last_cost = 0.0, 0.0

    def due(self) -> bool:
        return time.monotonic() - self.last_end >= 50 * self.last_cost

    def written(self, started: float) -> None:
        self.last_end = time.monotonic()
        self.last_cost = self.last_end - started


def train(
    setup: Setup,
    output: str,
    quiet: bool = False,
    program_dir: str | None = None,
    resume: bool = False,
    accept_version_change: bool = False,
) -> Written:
    """The host loop of the run of every grid point: a chunk of `eval_frequency` steps, an
    evaluation, the metrics, and the files when they are due; at the end the last checkpoint,
    then `.params`, then `.out`, so that a run whose `.out` is complete has all its files.
    `program_dir`: see `compile_run`. With `resume`, the run goes on from its checkpoint when
    there is one (one that cannot be resumed is a `RunError`, before anything compiles), and a
    finished run writes its `.out` again from it. A signal stops the run at a chunk's end
    (`StopSignals`, `RunInterruptedError`); a file that cannot be written is a `RunError`."""
    cfg, agent, points, axes = setup.cfg, setup.agent, setup.points, setup.axes
    prefixes = output_prefixes(output, points, axes)
    num_seeds, chunk_steps = cfg["num_seeds"], cfg["eval_frequency"]
    num_chunks = cfg["num_steps"] // chunk_steps
    checkpoint_path = f"{output}.ckpt"
    restored = None
    if resume and checkpoint.exists(checkpoint_path):
        try:
            restored = checkpoint.load(
                checkpoint_path,
                cfg,
                setup.shapes,
                setup.provenance,
                accept_version_change,
                metric_names(agent),
            )
        except checkpoint.CheckpointError as error:
            raise RunError(f"--resume: {error}") from None
        if restored.note:
            print(restored.note, file=sys.stderr)
        setup = setup._replace(provenance=restored.provenance)  # both versions, if two
        checkpoint.remove_partial_files([output, *prefixes])
    elif resume and not quiet:
        print(f"--resume: no checkpoint {checkpoint_path}; starting at step 0", file=sys.stderr)
    run = compile_setup(setup, program_dir)
    init_keys, eval_key = run_keys(cfg["seed"], num_seeds)
    if restored is None:
        state = run.init(init_keys)
        # each metric: one [G, S] array per evaluation
        progress = checkpoint.Progress.start(metric_names(agent))
    else:
        state = checkpoint.place(restored.leaves, setup.shapes, run.pairs)
        progress = restored.progress
    chunk = compile_chunk(setup, run, state, quiet)

    history, eval_times = progress.history, progress.eval_times
    steps_since_save, steps_since_checkpoint = progress.steps_since_save, 0
    params_paths = [f"{p}.params" for p in prefixes] if cfg["save_params"] else []
    schedule = OutputSchedule()
    first = progress.chunks_done  # 0, or where the checkpoint left off
    saved_at = first * chunk_steps if restored else None  # the step of the last checkpoint
    chunks = range(first, num_chunks)
    # The bar only on a terminal (None): a job's log gets the evaluation lines, not the bar.
    bar = tqdm(chunks, initial=first, total=num_chunks, disable=quiet or None, dynamic_ncols=True)
    try:
        with StopSignals() as stop:
            for i in bar:
                t0 = i * chunk_steps
                if params_paths and steps_since_save >= cfg["save_frequency"]:
                    save_params(params_paths, agent, state.learner)
                    steps_since_save = 0
                train_now = t0 >= cfg["training_start_time"]
                state, report = chunk(state, jnp.int32(t0), jnp.bool_(train_now), setup.hp)
                keys = jax.random.split(jax.random.fold_in(eval_key, i), num_seeds)
                scores = np.asarray(run.evaluate(state.learner, keys, setup.hp), np.float32)
                record_evaluation(history, scores, jax.device_get(report), points, axes, i, t0)
                eval_times.append(t0)
                steps_since_save += chunk_steps
                steps_since_checkpoint += chunk_steps
                last, stopping = i == num_chunks - 1, stop.signum is not None
                if last or stopping or steps_since_checkpoint >= checkpoint_every(cfg):
                    progress = checkpoint.Progress(i + 1, steps_since_save, eval_times, history)
                    checkpoint.save(checkpoint_path, cfg, state, progress, setup.provenance)
                    saved_at, steps_since_checkpoint = t0 + chunk_steps, 0
                if not last and (stopping or schedule.due()):
                    started = time.monotonic()
                    write_outs(prefixes, setup, eval_times, history)
                    schedule.written(started)
                show_progress(bar, quiet, t0 + chunk_steps, scores, points, axes)
                if stopping and not last:
                    name = signal.Signals(stop.signum).name
                    raise RunInterruptedError(
                        f"stopped by {name} at step {saved_at} of {cfg['num_steps']}: "
                        f"checkpoint {checkpoint_path} written; go on with --resume",
                        stop.signum,
                    )
        # The last files: the checkpoint is written, then `.params`, then `.out` (also when the
        # run was finished already: a lost or damaged `.out` is written again).
        if params_paths:
            save_params(params_paths, agent, state.learner)
        write_outs(prefixes, setup, eval_times, history)
    except files.WriteError as error:
        intact = (
            f"the last checkpoint, {checkpoint_path} (step {saved_at}), is intact: go on with "
            "--resume once there is room"
            if saved_at is not None
            else "no checkpoint was written yet"
        )
        raise RunError(f"cannot write {error.filename}: {error.strerror}; {intact}", 1) from None
    records = [point_record(setup, eval_times, history, g) for g in range(len(points))]
    outs = [f"{p}.out" for p in prefixes]
    return Written(outs, records, params_paths, checkpoint_path, num_chunks - first)


def metric_names(agent: Agent) -> tuple[str, ...]:
    """What a run records at each evaluation, for each pair."""
    return ("reward_rates", *agent.diagnostics, "diverged")


def compile_chunk(setup: Setup, run: CompiledRun, state, quiet: bool):
    """The chunk, compiled before it first runs, so that the memory check can count what XLA
    says the loop needs beside the state; the start-up log says how much the run takes."""
    chunk = run.chunk.lower(state, jnp.int32(0), jnp.bool_(True), setup.hp).compile()
    temporaries = temporaries_bytes(chunk, len(run.pairs.mesh.devices.flat))
    try:
        memory = check_memory(
            setup.shapes,
            metrics=setup.metrics,
            temporaries=temporaries,
            evaluation=setup.evaluation,
        )
    except config.ConfigError as error:
        raise RunError(f"config error: {error}") from None
    if not quiet:
        print(memory, file=sys.stderr)
    return chunk


def point_record(setup: Setup, eval_times, history, g: int) -> dict:
    """The `.out` record of grid point `g`, with what produced it."""
    return results.out_record(setup.points[g], eval_times, history, g, setup.provenance)


def write_outs(prefixes: list[str], setup: Setup, eval_times, history) -> None:
    for g, prefix in enumerate(prefixes):
        results.write_out(f"{prefix}.out", point_record(setup, eval_times, history, g))


def save_params(paths: list[str], agent: Agent, learner) -> None:
    results.write_params(paths, jax.device_get(agent.saved_params(learner)))


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


# --------------------------------------------------------------------------------------------
# The command line of every train_<agent>.py
# --------------------------------------------------------------------------------------------


def parse_args(agent_type: str, argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(description=f"Train the {agent_type} agent.")
    parser.add_argument(
        "--seed", "-s", type=number(int, 0, maximum=MAX_SEED), default=0, help="master PRNG seed"
    )
    parser.add_argument("--config", "-c", required=True, help="path to a JSON config")
    parser.add_argument("--output", "-o", default=agent_type, help="output prefix")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or logs")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="go on from the checkpoint <output>.ckpt of an interrupted run (if there is one)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start again from step 0 over the checkpoint <output>.ckpt of an earlier run "
        "(which a run without --resume or --restart refuses to replace)",
    )
    parser.add_argument(
        "--accept-version-change",
        action="store_true",
        help="--resume even from a checkpoint that another version of the code, of jax, "
        "jaxlib, haiku or optax, or another kind of device wrote",
    )
    return parser.parse_args(argv)


def main(agent_type: str, build_agent: BuildAgent, argv=None) -> Written:
    """Entry point of every `train_*.py`: parse flags and `run`; a run that cannot start or go
    on prints one line and exits (status 2 for a bad config or flag, 1 for a file that could
    not be written, 128 + the signal's number when a signal stopped it)."""
    args = parse_args(agent_type, argv)
    try:
        return run(
            agent_type,
            build_agent,
            args.config,
            args.output,
            seed=args.seed,
            resume=args.resume,
            quiet=args.quiet,
            accept_version_change=args.accept_version_change,
            restart=args.restart,
        )
    except RunError as error:
        print(error, file=sys.stderr)
        sys.exit(error.status)
    except KeyboardInterrupt:  # Ctrl-C before training began, or a second one during it
        print(
            "interrupted: the files written so far are whole; --resume goes on from the last "
            "checkpoint, if one was written",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGINT)
