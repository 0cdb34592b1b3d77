"""A training run, on one screen: `run` is the one way into one (design §1, §9-11); the
command line of every `train_<agent>.py` (`cli.py`), the Figure 4 jobs, the benchmark and the
tests call it.

The whole run, in order (`train`):
1. `prepare`: the config validated (`config.py`), the environment and the agent built, the
   memory checked, all before anything compiles;
2. `restore`: with `--resume`, the checkpoint `<output>.ckpt` read and checked (`checkpoint.py`);
3. `start`: the loop of `loop.py` jitted and sharded over the devices (`compilation.py`), and
   the training state initialised or placed from the checkpoint;
4. per chunk, `one_chunk`: `eval_frequency` environment steps of every (grid point, seed) pair,
   then a greedy evaluation and the metrics; then a checkpoint and the `.out` files when due;
5. `finish`: the last checkpoint, `.params`, then `.out` (`results.py`), each written atomically.
The benchmark times the compiled pieces of the same `prepare`d run (`measure.py`).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import environments
from agents import Agent, HParams
from training import checkpoint, config, files, paths, provenance, results
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
from training.definition import AgentDefinition
from training.schema import checkpoint_every
from training.trackers import Trackers, open_listener


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


def prepare(definition: AgentDefinition, cfg, seed: int = 0) -> Setup:
    """Validate `cfg` (a dict, or the path of a JSON file) for the agent of `definition`, build
    the environment and the agent, and check that the training state fits in memory: all before
    anything compiles. Raises `RunError` with one line naming the key and what was expected."""
    where = f"{cfg}: " if isinstance(cfg, str) else ""
    try:
        if isinstance(cfg, str):
            cfg = config.load_config(cfg, definition)
        else:
            cfg = config.validate_config(cfg, definition)
        cfg = {**cfg, "agent_type": definition.agent_type, "seed": seed}
        env = environments.make_environment(cfg["environment"], cfg["env_config"])
        if cfg["episodic_env"] != env.episodic:  # the reference's key, kept for its configs
            kind = "episodic" if env.episodic else "continuing"
            raise config.ConfigError(
                f"episodic_env: {cfg['environment']} is {kind}, so it must be "
                f"{str(env.episodic).lower()}, got {str(cfg['episodic_env']).lower()}"
            )
        agent = definition.build_agent(cfg, env)
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
    definition: AgentDefinition,
    cfg,
    output: str,
    *,
    seed: int = 0,
    resume: bool = False,
    quiet: bool = False,
    accept_version_change: bool = False,
    restart: bool = False,
    trackers: Trackers | None = None,
) -> Written:
    """Train `cfg` (a dict, or the path of a JSON file) for the agent of `definition` into
    files named `<output>.out` (one per grid point, `<output>_<point>.out`), `.params` and
    `.ckpt` (`paths.py`); with
    `resume`, go on from `<output>.ckpt` when there is one (`accept_version_change`: even if
    another version of the code or libraries wrote it); with `restart`, start again from step
    0 over an existing checkpoint, which a run with neither refuses. The run holds
    `<output>.lock` while it trains. Raises `RunError`, whose message is the one line the
    command line prints, before anything compiles when it can; `RunInterruptedError` when a
    signal stopped it at the end of a chunk. `trackers`: where the curves also go live
    (TensorBoard, W&B: `trackers.py`)."""
    start = time.time()
    if resume and restart:
        raise RunError("--resume and --restart: give one (go on, or start again from step 0)")
    program_dir = enable_compilation_cache()  # before anything compiles, even a PRNG key
    setup = prepare(definition, cfg, seed)
    for line in setup.warnings:
        print(line, file=sys.stderr)
    prefixes = paths.point_prefixes(output, setup.points, setup.axes)
    try:
        files.check_output(output, paths.run_files(output, prefixes))
        with files.OutputLock(output):
            start_over(paths.checkpoint(output), setup.cfg, resume, restart)
            written = train(
                setup, output, quiet, program_dir, resume, accept_version_change, trackers
            )
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


def pair_label(points: list[dict], axes, g: int, s: int) -> str:
    return f"seed {s}" + (f" of {paths.point_name(points[g], axes)}" if axes else "")


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


class RunFiles(NamedTuple):
    """The files of one run (`paths.py`)."""

    output: str  # the run's output prefix
    prefixes: list[str]  # one output prefix per grid point
    params: list[str]  # their `.params` ([] without save_params)
    checkpoint: str  # `<output>.ckpt`

    @classmethod
    def of(cls, setup: Setup, output: str) -> RunFiles:
        prefixes = paths.point_prefixes(output, setup.points, setup.axes)
        params = [paths.params(p) for p in prefixes] if setup.cfg["save_params"] else []
        return cls(output, prefixes, params, paths.checkpoint(output))


class Loop(NamedTuple):
    """The compiled run the host loop drives."""

    run: CompiledRun  # init, evaluate, and the pairs' placement
    chunk: Any  # the compiled chunk: (states, t0, train, hp) -> (states, report)
    eval_key: jax.Array  # the evaluations' key; chunk i evaluates with fold_in(eval_key, i)


class Carry(NamedTuple):
    """What the host loop carries from one chunk to the next."""

    state: Any  # the training state of every (grid point, seed) pair, on the devices
    progress: checkpoint.Progress  # chunks done, steps since `.params`, eval times, metrics
    steps_since_checkpoint: int
    saved_at: int | None  # the step of the last checkpoint written or restored (None: none)


def train(
    setup: Setup,
    output: str,
    quiet: bool = False,
    program_dir: str | None = None,
    resume: bool = False,
    accept_version_change: bool = False,
    trackers: Trackers | None = None,
) -> Written:
    """The host loop of the run of every grid point: restore or initialise, then per chunk
    `one_chunk` (training, evaluation, metrics), a checkpoint every `checkpoint_frequency`
    steps and the `.out` files when due; then `finish`. `program_dir`: see `compile_run`.
    With `resume`, the run goes on from its checkpoint when there is one (one that cannot be
    resumed is a `RunError`, before anything compiles), and a finished run writes its `.out`
    again from it. A signal stops the run at a chunk's end (`StopSignals`,
    `RunInterruptedError`); a file that cannot be written is a `RunError`."""
    cfg, run_files = setup.cfg, RunFiles.of(setup, output)
    restored = restore(setup, run_files, resume, accept_version_change, quiet)
    if restored is not None:  # its files record every version that ran it
        setup = setup._replace(provenance=restored.provenance)
    compiled, carry = start(setup, restored, program_dir, quiet)
    listener = open_listener(trackers, output, setup, carry.progress, quiet)  # live curves
    carry = carry._replace(progress=carry.progress._replace(trackers=listener.run_ids()))
    num_chunks = cfg["num_steps"] // cfg["eval_frequency"]
    first = carry.progress.chunks_done  # 0, or where the checkpoint left off
    schedule = OutputSchedule()
    # The bar only on a terminal (None): a job's log gets the evaluation lines, not the bar.
    bar = tqdm(
        range(first, num_chunks),
        initial=first,
        total=num_chunks,
        disable=quiet or None,
        dynamic_ncols=True,
    )
    try:
        with StopSignals() as stop:
            for i in bar:
                started = time.monotonic()
                carry, scores = one_chunk(setup, compiled, run_files, carry, i)
                elapsed = time.monotonic() - started
                listener.evaluated(i * cfg["eval_frequency"], carry.progress.history, elapsed)
                last, stopping = i == num_chunks - 1, stop.signum is not None
                if last or stopping or carry.steps_since_checkpoint >= checkpoint_every(cfg):
                    listener.flush()  # the curves up to the checkpoint are logged before it
                    carry = save_checkpoint(setup, run_files, carry)
                if not last and (stopping or schedule.due()):
                    started = time.monotonic()
                    write_outs(run_files.prefixes, setup, carry.progress)
                    schedule.written(started)
                show_progress(bar, quiet, (i + 1) * cfg["eval_frequency"], scores, setup)
                if stopping and not last:
                    raise interrupted(stop.signum, carry, run_files, cfg)
        finish(setup, run_files, carry)
    except files.WriteError as error:
        raise cannot_write(error, run_files, carry.saved_at) from None
    finally:
        listener.close()
    records = [point_record(setup, carry.progress, g) for g in range(len(setup.points))]
    outs = [paths.out(p) for p in run_files.prefixes]
    return Written(outs, records, run_files.params, run_files.checkpoint, num_chunks - first)


def restore(
    setup: Setup, run_files: RunFiles, resume: bool, accept_version_change: bool, quiet: bool
) -> checkpoint.Restored | None:
    """With `resume`, the run's checkpoint checked against the config and this version
    (`checkpoint.load`; a damaged latest falls back to the one before), and the partial files
    of an interrupted write removed; None to start at step 0."""
    path = run_files.checkpoint
    if not resume or not checkpoint.exists(path):
        if resume and not quiet:
            print(f"--resume: no checkpoint {path}; starting at step 0", file=sys.stderr)
        return None
    try:
        restored = checkpoint.load(
            path,
            setup.cfg,
            setup.shapes,
            setup.provenance,
            accept_version_change,
            metric_names(setup.agent),
        )
    except checkpoint.CheckpointError as error:
        raise RunError(f"--resume: {error}") from None
    if restored.note:
        print(restored.note, file=sys.stderr)
    checkpoint.remove_partial_files([run_files.output, *run_files.prefixes])
    return restored


def metric_names(agent: Agent) -> tuple[str, ...]:
    """What a run records at each evaluation, for each pair: one [G, S] array each."""
    return (results.DEFAULT_METRIC, *agent.diagnostics, results.DIVERGED_KEY)


def start(
    setup: Setup, restored: checkpoint.Restored | None, program_dir: str | None, quiet: bool
) -> tuple[Loop, Carry]:
    """The compiled loop, and the training state: initialised from the seed's keys, or the
    checkpoint's placed on the devices."""
    run = compile_setup(setup, program_dir)
    init_keys, eval_key = run_keys(setup.cfg["seed"], setup.cfg["num_seeds"])
    if restored is None:
        state = run.init(init_keys)
        carry = Carry(state, checkpoint.Progress.start(metric_names(setup.agent)), 0, None)
    else:
        state = checkpoint.place(restored.leaves, setup.shapes, run.pairs)
        progress = restored.progress
        carry = Carry(state, progress, 0, progress.chunks_done * setup.cfg["eval_frequency"])
    chunk = compile_chunk(setup, run, state, quiet)
    return Loop(run, chunk, eval_key), carry


def one_chunk(
    setup: Setup, compiled: Loop, run_files: RunFiles, carry: Carry, i: int
) -> tuple[Carry, np.ndarray]:
    """Chunk `i`: `.params` first when they are due, then `eval_frequency` environment steps of
    every pair (updates from `training_start_time` on), a greedy evaluation of every pair, and
    the evaluation's metrics appended to the history. Returns the carry and the scores [G, S]."""
    cfg, progress = setup.cfg, carry.progress
    chunk_steps, num_seeds = cfg["eval_frequency"], cfg["num_seeds"]
    t0 = i * chunk_steps
    steps_since_save = progress.steps_since_save
    if run_files.params and steps_since_save >= cfg["save_frequency"]:
        save_params(run_files.params, setup.agent, carry.state.learner)
        steps_since_save = 0
    train_now = jnp.bool_(t0 >= cfg["training_start_time"])
    state, report = compiled.chunk(carry.state, jnp.int32(t0), train_now, setup.hp)
    keys = jax.random.split(jax.random.fold_in(compiled.eval_key, i), num_seeds)
    scores = np.asarray(compiled.run.evaluate(state.learner, keys, setup.hp), np.float32)
    record_evaluation(progress.history, scores, jax.device_get(report), setup, i, t0)
    progress.eval_times.append(t0)
    progress = checkpoint.Progress(
        i + 1,
        steps_since_save + chunk_steps,
        progress.eval_times,
        progress.history,
        progress.trackers,
    )
    steps_since_checkpoint = carry.steps_since_checkpoint + chunk_steps
    return Carry(state, progress, steps_since_checkpoint, carry.saved_at), scores


def save_checkpoint(setup: Setup, run_files: RunFiles, carry: Carry) -> Carry:
    checkpoint.save(run_files.checkpoint, setup.cfg, carry.state, carry.progress, setup.provenance)
    saved_at = carry.progress.chunks_done * setup.cfg["eval_frequency"]
    return carry._replace(steps_since_checkpoint=0, saved_at=saved_at)


def finish(setup: Setup, run_files: RunFiles, carry: Carry) -> None:
    """The last files, after the last checkpoint: `.params`, then `.out` (also when the run was
    finished already: a lost or damaged `.out` is written again), so that a run whose `.out` is
    complete has all its files."""
    if run_files.params:
        save_params(run_files.params, setup.agent, carry.state.learner)
    write_outs(run_files.prefixes, setup, carry.progress)


def interrupted(signum: int, carry: Carry, run_files: RunFiles, cfg: dict) -> RunInterruptedError:
    name = signal.Signals(signum).name
    return RunInterruptedError(
        f"stopped by {name} at step {carry.saved_at} of {cfg['num_steps']}: "
        f"checkpoint {run_files.checkpoint} written; go on with --resume",
        signum,
    )


def cannot_write(error: files.WriteError, run_files: RunFiles, saved_at: int | None) -> RunError:
    intact = (
        f"the last checkpoint, {run_files.checkpoint} (step {saved_at}), is intact: go on with "
        "--resume once there is room"
        if saved_at is not None
        else "no checkpoint was written yet"
    )
    return RunError(f"cannot write {error.filename}: {error.strerror}; {intact}", 1)


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


def point_record(setup: Setup, progress: checkpoint.Progress, g: int) -> dict:
    """The `.out` record of grid point `g`, with what produced it."""
    return results.out_record(
        setup.points[g], progress.eval_times, progress.history, g, setup.provenance
    )


def write_outs(prefixes: list[str], setup: Setup, progress: checkpoint.Progress) -> None:
    for g, prefix in enumerate(prefixes):
        results.write_out(paths.out(prefix), point_record(setup, progress, g))


def save_params(params_paths: list[str], agent: Agent, learner) -> None:
    results.write_params(params_paths, jax.device_get(agent.saved_params(learner)))


def record_evaluation(history: dict, scores, report, setup: Setup, i: int, t0: int) -> None:
    """Append one evaluation's [G, S] metrics to `history`; say which pairs just diverged."""
    returns, diverged_so_far = history[results.DEFAULT_METRIC], history[results.DIVERGED_KEY]
    diverged = diverged_so_far[-1] if diverged_so_far else np.zeros(scores.shape, bool)
    for g, s in zip(*np.nonzero(report.nonfinite & ~diverged), strict=True):
        print(
            f"warning: {pair_label(setup.points, setup.axes, g, s)} diverged: non-finite Q values "
            f"or losses in the chunk before evaluation {i} (t={t0}); the other seeds go on",
            file=sys.stderr,
        )
    returns.append(scores)
    for name, value in report.diagnostics.items():
        history[name].append(np.asarray(value, np.float32))
    diverged_so_far.append(diverged | report.nonfinite)


def show_progress(bar, quiet: bool, t: int, scores: np.ndarray, setup: Setup) -> None:
    """The bar shows the mean return over seeds (of the best grid point); the log, each seed's
    return (of the best point)."""
    points, axes = setup.points, setup.axes
    means = np.nanmean(scores, axis=1) if np.isfinite(scores).any() else np.zeros(len(points))
    best = int(np.argmax(means))
    if axes:
        bar.set_postfix(time=t, best=f"{paths.point_name(points[best], axes)} {means[best]:.3f}")
    else:
        bar.set_postfix(time=t, mean_return=f"{means[best]:.3f}")
    if not quiet:
        where = f" (best point {paths.point_name(points[best], axes)})" if axes else ""
        bar.write(f"t={t} returns{where}: " + " ".join(f"{s:.3f}" for s in scores[best]))
