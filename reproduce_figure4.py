"""Figure 4 of the paper from one command: tuning, final runs and the figure, for every cell.

    python reproduce_figure4.py                  # final runs at the table's values, then the figure
    python reproduce_figure4.py --quick          # the same at toy sizes: minutes on a laptop CPU
    python reproduce_figure4.py --estimate       # projected wall time of each stage on this machine
    python reproduce_figure4.py --stage tune select              # grid search, best point per cell
    python reproduce_figure4.py --stage final plot --hyperparameters selected
    python reproduce_figure4.py --executor slurm --slurm-partition gpu --gpus-per-job 1

A cell is an agent × environment × data regime (`figure4_configs.py`, 5 × 3 × 2 = 30), and each
stage runs one job per chosen cell (`--agents`, `--envs`, `--regimes`). Stages (`--stage`, one
or more, always run in this order; default `final plot`):
- tune: one grid run per cell over step size × softmax temperature (default: the powers of two
  the table's values come from, 10 × 11 points), `--tune-seeds` seeds per point;
- select: the best grid point per cell by return averaged over the run and its seeds (95%
  bootstrap interval over seeds, `sweep_summary.py`), written as `selected/<cell>.json`;
- final: the config's 30 seeds at the table's values (`--hyperparameters table`, default) or the
  selected ones (`--hyperparameters selected`);
- plot: `figure4.png`, one panel per environment × regime, one line per agent.

Everything lands under `--out-dir`: `tune/` (grid configs and one `.out` per point), `selected/`,
`final/` (or `final_selected/`: each job's config beside its `.out`), `logs/` (submitit's) and
`figure4.png`. A job whose outputs are finished (complete, and holding the job's config) is
skipped, and an interrupted job goes on from its checkpoint (`--resume`), so an interrupted
reproduction continues where it stopped.

Executors (`--executor`): `inline` runs the jobs one after another in this process; `local` and
`slurm` hand them to submitit (parallel processes here, or a SLURM job array), which pickles
`run_job` and its plain arguments, so every job runs the same code path.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import sys
import time
from typing import NamedTuple

import figure4_configs as f4
from figure4_configs import AGENTS, ENVIRONMENTS, REGIMES, Cell

ROOT = os.path.dirname(os.path.abspath(__file__))
PROG = "reproduce_figure4.py"
STAGES = ("tune", "select", "final", "plot")
METRIC = "reward_rates"

# The table's step sizes and temperatures are powers of two apart (3.125e-6 ... 1.6e-3 and
# 0.0125 ... 12.8), so the grid they came from is taken to be those powers of two.
STEP_SIZES = tuple(3.125e-6 * 2**k for k in range(10))
TEMPERATURES = tuple(0.0125 * 2**k for k in range(11))
TUNE_SEEDS = 5

# --quick: sizes at which every stage of every cell runs in seconds on a laptop CPU. Only keys a
# config has are replaced (rollout_length only for the rollout agents, latent sizes only for the
# latent agents); the regimes keep their update and target settings.
QUICK = {
    "num_hidden_layers": 1,
    "num_hidden_units": 16,
    "num_seeds": 2,
    "batch_size": 8,
    "buffer_size": 500,
    "num_steps": 200,
    "eval_frequency": 20,
    "training_start_time": 40,
    "eval_steps": 20,
    "eval_batch_size": 4,
    "save_frequency": 100,
    "rollout_length": 2,
    "num_features": 4,
    "feature_width": 4,
}
QUICK_STEP_SIZES = (8e-4, 1.6e-3)  # tiny networks learn anything in 200 steps only when fast
QUICK_TEMPERATURES = (0.1, 0.8)
QUICK_TUNE_SEEDS = 2

LOCAL_NO_LIMIT_MIN = 60 * 24 * 365  # submitit's local executor kills jobs after 2 min otherwise
SLURM_DEFAULT_MIN = 24 * 60
MEASURE_STEPS = 25  # environment steps per timed chunk of --estimate
NEEDS_GPUS_HOURS = 24.0


class UserError(Exception):
    """A bad flag or missing input: one line on stderr naming it, exit status 2."""


class Output(NamedTuple):
    path: str  # a .out file
    expected: dict  # config values (seed included) it must hold to be this job's output


class Job(NamedTuple):
    stage: str
    cell: Cell
    raw: dict  # the config to run; a grid's axes are lists
    config_path: str
    prefix: str
    outputs: tuple  # of Output: one per grid point


# --------------------------------------------------------------------------------------------
# Configs of each stage's jobs (pure)
# --------------------------------------------------------------------------------------------


def quick_config(raw: dict) -> dict:
    return {**raw, **{key: value for key, value in QUICK.items() if key in raw}}


def table_config(cell: Cell) -> dict:
    """The cell's committed config (configs/figure4), so a hand edit of it is honoured."""
    with open(f4.config_path(cell)) as f:
        return json.load(f)


def selected_path(out_dir: str, cell: Cell) -> str:
    return os.path.join(out_dir, "selected", f"{cell.name}.json")


def final_dir(out_dir: str, hyperparameters: str) -> str:
    # Separate folders, so that runs at the table's and at the selected values never mix.
    return os.path.join(out_dir, "final" if hyperparameters == "table" else "final_selected")


def grid_output_path(prefix: str, point: dict) -> str:
    """The grid run's name for a point's `.out` (`config.point_name`, over sorted keys)."""
    import config

    return f"{prefix}_{config.point_name(point, sorted(point))}.out"


def tune_job(cell: Cell, args) -> Job:
    key = AGENTS[cell.agent].step_size_key
    base = table_config(cell)
    base = quick_config(base) if args.quick else base
    # No parameter files: a grid has hundreds of runs, and select needs only the returns.
    raw = {**base, "num_seeds": args.tune_seeds, "save_params": False}
    grid = {**raw, key: list(args.step_sizes), "softmax_temp": list(args.temperatures)}
    prefix = os.path.join(args.out_dir, "tune", cell.name)
    outputs = tuple(
        Output(
            grid_output_path(prefix, {key: step, "softmax_temp": temp}),
            {**raw, key: step, "softmax_temp": temp, "seed": args.seed},
        )
        for step in args.step_sizes
        for temp in args.temperatures
    )
    return Job("tune", cell, grid, prefix + ".json", prefix, outputs)


def final_job(cell: Cell, args) -> Job:
    if args.hyperparameters == "table":
        raw = table_config(cell)
    else:
        path = selected_path(args.out_dir, cell)
        if not os.path.exists(path):
            raise UserError(
                f"--hyperparameters selected: no {path}: run --stage tune select for "
                f"{cell.name} first"
            )
        with open(path) as f:
            raw = json.load(f)
    raw = quick_config(raw) if args.quick else raw
    prefix = os.path.join(final_dir(args.out_dir, args.hyperparameters), cell.name)
    output = Output(prefix + ".out", {**raw, "seed": args.seed})
    return Job("final", cell, raw, prefix + ".json", prefix, (output,))


# --------------------------------------------------------------------------------------------
# Finished outputs
# --------------------------------------------------------------------------------------------


def same_value(expected, got) -> bool:
    """Config values agree; step sizes may have gone through float32 in a grid's record."""
    numbers = (int, float)
    if isinstance(expected, numbers) and isinstance(got, numbers):
        if isinstance(expected, bool) or isinstance(got, bool):
            return expected is got
        return math.isclose(expected, got, rel_tol=1e-6)
    return expected == got


def is_finished(output: Output) -> bool:
    """The `.out` exists, has every evaluation of its config, and that config is the job's (a
    stale file of other settings is not this job's result)."""
    import plot_metric

    if not os.path.exists(output.path):
        return False
    try:
        record = plot_metric.load_out(output.path)
    except plot_metric.PlotError:
        return False
    config = getattr(record.get("config"), "__dict__", {})
    expected = output.expected
    evaluations = expected["num_steps"] // expected["eval_frequency"]
    return len(record["metrics"].get("eval_times", [])) == evaluations and all(
        key in config and same_value(value, config[key]) for key, value in expected.items()
    )


def job_finished(job: Job) -> bool:
    return all(is_finished(output) for output in job.outputs)


# --------------------------------------------------------------------------------------------
# One job, and where the jobs run
# --------------------------------------------------------------------------------------------


def run_job(
    module: str, agent_type: str, config_path: str, prefix: str, seed: int, quiet: bool = True
) -> str:
    """One training run (a grid run for tune) in this process, as `train_<agent>.py` would do,
    going on from `<prefix>.ckpt` when an earlier try of this job was interrupted.

    The job function of every executor: top level and plain arguments, so submitit can pickle
    it; the agent's script is loaded by name (nothing imports a train_* script statically)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    import experiment

    build_agent = importlib.import_module(module).build_agent
    argv = [f"--seed={seed}", f"--config={config_path}", f"--output={prefix}", "--resume"]
    try:
        experiment.main(agent_type, build_agent, argv=argv + (["--quiet"] if quiet else []))
    except SystemExit as exit_:  # an exception, so the other jobs of an inline stage go on
        if exit_.code:
            raise RuntimeError(
                f"training exited with status {exit_.code} (the line before says why)"
            ) from None
    return prefix


def job_arguments(job: Job, seed: int, quiet: bool) -> tuple:
    spec = AGENTS[job.cell.agent]
    return spec.module, spec.agent_type, job.config_path, job.prefix, seed, quiet


def last_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def job_done(job: Job, message: str) -> None:
    """A finished tune job's checkpoint goes: a grid's training state is up to ~19 GB per cell
    (110 points x 5 seeds x 100 000 transitions), and select needs only the `.out` files."""
    if job.stage == "tune" and os.path.exists(job.prefix + ".ckpt"):
        os.remove(job.prefix + ".ckpt")
    print(f"{job.stage} {job.cell.name}: {message}", flush=True)


def run_inline(jobs: list[Job], args) -> list[str]:
    failures = []
    for i, job in enumerate(jobs, start=1):
        print(f"{job.stage} {job.cell.name} ({i}/{len(jobs)}): running", flush=True)
        start = time.time()
        try:
            run_job(*job_arguments(job, args.seed, quiet=True))
        except Exception as error:  # one failed cell must not stop the others
            failures.append(f"{job.stage} {job.cell.name}: failed: {last_line(error)}")
            continue
        job_done(job, f"done in {time.time() - start:.0f} s")
    return failures


def make_executor(args, folder: str):
    """A submitit executor for `--executor local|slurm`; raises UserError off a SLURM cluster."""
    import submitit

    # The job function is pickled by reference (module `reproduce_figure4`): the job's Python,
    # started by submitit, must find this folder's modules wherever the user launched from.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ROOT not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([ROOT, *paths])
    if args.executor == "local":
        if args.parallel > 1 and args.gpus_per_job:
            # Jobs sharing a GPU: JAX's default preallocation of 75% of it would fail the second.
            os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(
            timeout_min=args.time or LOCAL_NO_LIMIT_MIN, gpus_per_node=args.gpus_per_job or 0
        )
        return executor
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    except RuntimeError as error:
        raise UserError(f"--executor slurm: {last_line(error)}") from None
    parameters = {
        "name": "figure4",
        "timeout_min": args.time or SLURM_DEFAULT_MIN,
        "gpus_per_node": 1 if args.gpus_per_job is None else args.gpus_per_job,
        "cpus_per_task": args.cpus_per_job,
        "slurm_array_parallelism": args.slurm_array_parallelism,
    }
    if args.slurm_partition:
        parameters["slurm_partition"] = args.slurm_partition
    if args.mem_gb:
        parameters["mem_gb"] = args.mem_gb
    executor.update_parameters(**parameters)
    return executor


def run_submitit(jobs: list[Job], args) -> list[str]:
    """Submit through submitit and wait on each job's result. SLURM gets one job array; the
    local executor starts every job it is given at once, so it gets `--parallel` at a time."""
    folder = os.path.join(args.out_dir, "logs", jobs[0].stage, "%j")
    executor = make_executor(args, folder)
    group = args.parallel if args.executor == "local" else len(jobs)
    failures = []
    for start in range(0, len(jobs), group):
        batch = jobs[start : start + group]
        columns = zip(*(job_arguments(job, args.seed, quiet=False) for job in batch), strict=True)
        handles = executor.map_array(run_job, *columns)
        names = ", ".join(job.cell.name for job in batch)
        print(f"{batch[0].stage}: {args.executor} jobs {handles[0].job_id}...: {names}", flush=True)
        for job, handle in zip(batch, handles, strict=True):
            try:
                handle.result()
            except Exception as error:
                failures.append(
                    f"{job.stage} {job.cell.name}: failed: {last_line(error)} "
                    f"(log: {handle.paths.stderr})"
                )
                continue
            job_done(job, "done")
    return failures


def check_configs(jobs: list[Job]) -> None:
    """Validate every config before any job starts: a bad one is one line, not 30 failed jobs."""
    import config

    for job in jobs:
        try:
            config.validate_config(job.raw, AGENTS[job.cell.agent].agent_type)
        except config.ConfigError as error:
            raise UserError(f"{job.stage} {job.cell.name}: config error: {error}") from None


def write_if_changed(path: str, text: str) -> None:
    """Leave an unchanged file alone, so its time stamp says when it last meant something."""
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def run_stage(jobs: list[Job], args) -> None:
    pending = [job for job in jobs if not job_finished(job)]
    if len(pending) < len(jobs):
        print(f"{jobs[0].stage}: {len(jobs) - len(pending)} of {len(jobs)} jobs already finished")
    if not pending:
        return
    check_configs(pending)
    for job in pending:
        write_if_changed(job.config_path, f4.config_text(job.raw))
    run = run_inline if args.executor == "inline" else run_submitit
    failures = run(pending, args)
    for line in failures:
        print(line, file=sys.stderr)
    if failures:
        sys.exit(1)


# --------------------------------------------------------------------------------------------
# select
# --------------------------------------------------------------------------------------------


def select_cell(cell: Cell, args) -> str:
    """Rank the cell's finished grid points (sweep_summary), write the best as a config; return
    the line to print."""
    import sweep_summary

    outputs = tune_job(cell, args).outputs
    finished = [output.path for output in outputs if is_finished(output)]
    if not finished:
        return f"{cell.name}: no finished tune outputs in {os.path.dirname(outputs[0].path)}"
    try:
        runs, axes, ranked = sweep_summary.summarise(finished, METRIC, minimize=False)
    except sweep_summary.SweepError as error:
        return f"{cell.name}: cannot rank its grid: {error}"
    best = ranked[0]
    point = next(run.config for run in runs if run.path == best.path)
    spec = AGENTS[cell.agent]
    step, temp = point[spec.step_size_key], point["softmax_temp"]
    # The real-size config with the tuned values: `final` shrinks it again under --quick.
    raw = f4.with_hyperparameters(table_config(cell), cell.agent, float(step), float(temp))
    write_if_changed(selected_path(args.out_dir, cell), f4.config_text(raw))
    fmt = sweep_summary.number_format([best])
    table_step, table_temp = f4.TABLE[cell.agent][cell.env][cell.regime]
    notes = [] if len(finished) == len(outputs) else [f"{len(finished)}/{len(outputs)} points"]
    if min(len(args.step_sizes), len(args.temperatures)) > 2:  # else every point is an edge
        edges = sweep_summary.edge_warnings(best, runs, axes)
        notes += [line.removeprefix("warning: ") for line in edges]
    return (
        f"{cell.name}: {spec.step_size_key}={float(step)!r} softmax_temp={float(temp)!r} "
        f"return {fmt.format(best.score)} [{fmt.format(best.low)}, {fmt.format(best.high)}] "
        f"over {best.num_seeds} seeds (table: {table_step!r}, {table_temp!r})"
        + "".join(f"; {note}" for note in notes)
    )


def run_select(cells: list[Cell], args) -> None:
    for cell in cells:
        print("select " + select_cell(cell, args), flush=True)


# --------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------


def y_label(env: str) -> str:
    return "return" if ENVIRONMENTS[env].episodic else "return (average reward per step)"


def auto_window(num_evaluations: int, window: int | None) -> int:
    # By default 1/50 of the run: 2000 evaluations are noisy point by point.
    return max(1, min(num_evaluations, window or num_evaluations // 50))


def panel_curves(out_dir: str, agents: list[str], env: str, regime: str, window):
    """agent -> (times, mean, low, high) for each agent with a readable final output."""
    import plot_metric

    curves = {}
    for agent in agents:
        path = os.path.join(out_dir, f"{Cell(agent, env, regime).name}.out")
        if not os.path.exists(path):
            continue
        try:
            metrics = plot_metric.load_out(path)["metrics"]
            times, values = plot_metric.metric_values(path, metrics, METRIC)
            # As plot_metric.py: diverged seeds leave the mean and band, and a line says so.
            values, notes = plot_metric.healthy_values(path, metrics, METRIC, values)
            for note in notes:
                print(f"plot: {note}", file=sys.stderr)
            if values.shape[1]:
                curves[agent] = plot_metric.curve(times, values, auto_window(len(times), window))
        except plot_metric.PlotError as error:
            print(f"plot: {error}; drawn as absent", file=sys.stderr)
    return curves


def draw_figure(out_dir: str, agents, envs, regimes, window=None):
    """One row per regime, one column per environment, one line per agent whose final output
    exists; a panel without any says so. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colours = {agent: f"C{i}" for i, agent in enumerate(AGENTS)}  # the same in every panel
    fig, axes = plt.subplots(
        len(regimes), len(envs), figsize=(4.6 * len(envs), 3.6 * len(regimes)), squeeze=False
    )
    drawn = set()
    for row, regime in enumerate(regimes):
        for col, env in enumerate(envs):
            ax = axes[row][col]
            curves = panel_curves(out_dir, agents, env, regime, window)
            for agent, (times, mean, low, high) in curves.items():
                ax.plot(times, mean, color=colours[agent], linewidth=1.2, label=agent)
                ax.fill_between(times, low, high, color=colours[agent], alpha=0.2, linewidth=0)
            if not curves:
                ax.text(
                    0.5,
                    0.5,
                    "no runs yet",
                    ha="center",
                    va="center",
                    color="grey",
                    transform=ax.transAxes,
                )
            drawn |= set(curves)
            ax.set_title(f"{env}, {regime} data")
            ax.set_xlabel("environment steps")
            ax.set_ylabel(y_label(env))
            ax.grid(True, alpha=0.3)
    shown = [agent for agent in AGENTS if agent in drawn]
    handles = [Line2D([], [], color=colours[agent], linewidth=2) for agent in shown]
    if handles:
        fig.legend(handles, [AGENTS[a].label for a in shown], loc="lower center", ncol=len(shown))
    fig.tight_layout(rect=(0, 0.07 if handles else 0, 1, 1))
    return fig


def run_plot(args) -> None:
    import matplotlib.pyplot as plt

    path = os.path.join(args.out_dir, "figure4.png")
    folder = final_dir(args.out_dir, args.hyperparameters)
    fig = draw_figure(folder, args.agents, args.envs, args.regimes, args.window)
    lines = sum(len(ax.get_lines()) for ax in fig.axes)
    os.makedirs(args.out_dir, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {lines} curves from {folder} -> {path}")


# --------------------------------------------------------------------------------------------
# estimate
# --------------------------------------------------------------------------------------------


class Measurement(NamedTuple):
    """One agent timed after compilation, on its ProcMaze high-data config."""

    seeds: int
    compile_s: float  # tracing, lowering and XLA compilation of init, chunk and evaluate
    act_s: float  # one environment step of all seeds, training off (acting, env, storing)
    update_s: float  # one update of all seeds: a training-on step minus a training-off step
    eval_s: float  # one evaluation of all seeds
    raw: dict  # the config measured


def update_flops(agent_type: str, cfg: dict) -> float:
    """Matmul FLOPs of one update of one seed (benchmark.flops_per_step: one update minus
    none), used to carry the measured update time from ProcMaze to the other environments."""
    import benchmark
    import environments
    import loop

    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    sizes = loop.observation_size(env), env.num_actions()
    one = benchmark.flops_per_step(agent_type, {**cfg, "updates_per_step": 1}, *sizes)
    return one - benchmark.flops_per_step(agent_type, {**cfg, "updates_per_step": 0}, *sizes)


def measure(agent: str, raw: dict, seeds: int, steps: int = MEASURE_STEPS) -> Measurement:
    """Compile the agent's run (no persistent cache: a first launch) and time a training-on
    chunk, a training-off chunk and an evaluation of `steps` environment steps."""
    import jax
    import jax.numpy as jnp

    import compilation
    import config
    import environments

    spec = AGENTS[agent]
    raw = {**raw, "num_seeds": seeds, "eval_frequency": steps, "num_steps": 2 * steps}
    raw.update(training_start_time=0, save_params=False, updates_per_step=1)
    cfg = {**config.validate_config(raw, spec.agent_type), "agent_type": spec.agent_type}
    cfg["seed"] = 0
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    points = config.grid_points(cfg)  # one point: a config without lists
    hp = config.grid_hyperparameters(points)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)

    start = time.perf_counter()
    agent_fns = importlib.import_module(spec.module).build_agent(cfg, env)
    run = compilation.compile_run(agent_fns, env, cfg, len(points))
    state = run.init(keys)
    chunk = run.chunk.lower(state, jnp.int32(0), jnp.bool_(True), hp).compile()
    evaluate = run.evaluate.lower(state.learner, keys, hp).compile()
    compile_s = time.perf_counter() - start

    def timed(fn, *arguments):
        tick = time.perf_counter()
        result = jax.block_until_ready(fn(*arguments))
        return result, time.perf_counter() - tick

    # Acting first also fills the buffer a little; each call runs after its compilation above.
    (state, _), act = timed(chunk, state, jnp.int32(0), jnp.bool_(False), hp)
    (state, _), train = timed(chunk, state, jnp.int32(steps), jnp.bool_(True), hp)
    timed(evaluate, state.learner, keys, hp)
    _, evaluation = timed(evaluate, state.learner, keys, hp)
    return Measurement(
        seeds, compile_s, act / steps, max(train - act, 0.0) / steps, evaluation, raw
    )


def job_seconds(m: Measurement, cfg: dict, seeds: int, update_scale: float = 1.0) -> float:
    """Projected wall time of one job: compilation, then time linear in seeds (a CPU's cores
    are saturated at the measured seed count), steps, updates and evaluations."""
    trained = max(0, cfg["num_steps"] - cfg["training_start_time"])
    updates = trained * cfg.get("updates_per_step", 1)
    evaluations = cfg["num_steps"] // cfg["eval_frequency"]
    per_seed = (
        cfg["num_steps"] * m.act_s + updates * m.update_s * update_scale + evaluations * m.eval_s
    ) / m.seeds
    return m.compile_s + seeds * per_seed


class StageCost(NamedTuple):
    stage: str
    jobs: int
    env_steps: int
    seconds: float  # all jobs one after another
    longest: float  # the longest job: the wall time when every job runs at once


def stage_costs(cells: list[Cell], args, measurements: dict, scales: dict) -> list[StageCost]:
    tune = [tune_job(cell, args) for cell in cells]
    at_table = argparse.Namespace(**{**vars(args), "hyperparameters": "table"})
    final = [final_job(cell, at_table) for cell in cells]
    costs = []
    for stage, jobs in (("tune", tune), ("final", final)):
        steps, seconds = 0, []
        for job in jobs:
            cfg = job.outputs[0].expected
            seeds = cfg["num_seeds"] * len(job.outputs)  # grid points × seeds per point
            steps += cfg["num_steps"] * seeds
            seconds.append(job_seconds(measurements[job.cell.agent], cfg, seeds, scales[job.cell]))
        costs.append(StageCost(stage, len(jobs), steps, sum(seconds), max(seconds)))
    return costs


def run_estimate(cells: list[Cell], args) -> None:
    agents = sorted({cell.agent for cell in cells}, key=list(AGENTS).index)
    seeds = QUICK["num_seeds"] if args.quick else f4.shipped_config("ER")["num_seeds"]
    measurements, scales = {}, {}
    print(
        f"measuring each agent on its ProcMaze high-data config{' (--quick sizes)' * args.quick},"
        f" {seeds} seeds (the final stage's), {MEASURE_STEPS} steps training off, "
        f"{MEASURE_STEPS} steps with one update per step, 2 evaluations, after compiling "
        "(no compilation cache):",
        flush=True,
    )
    for agent in agents:
        raw = table_config(Cell(agent, "ProcMaze", "high"))
        raw = quick_config(raw) if args.quick else raw
        m = measure(agent, raw, seeds)
        measurements[agent] = m
        print(
            f"  {agent}: compile {m.compile_s:.1f} s; per step of {seeds} seeds "
            f"{1e3 * m.act_s:.2f} ms acting + {1e3 * m.update_s:.2f} ms per update; "
            f"evaluation {m.eval_s:.2f} s",
            flush=True,
        )
    for cell in cells:
        agent_type = AGENTS[cell.agent].agent_type
        base = update_flops(agent_type, measurements[cell.agent].raw)
        cfg = table_config(cell)
        scales[cell] = update_flops(agent_type, quick_config(cfg) if args.quick else cfg) / base
    print(
        "projection: time linear in seeds × steps; low data counts 10 updates per step at the "
        "measured update time; ButtonGrid and PanFlute scale the update time by their matmul "
        "FLOPs per update (benchmark.flops_per_step) relative to ProcMaze; tune runs "
        f"{len(args.step_sizes)} × {len(args.temperatures)} points × {args.tune_seeds} seeds per "
        "cell at the measured time per seed; every job compiles once"
    )
    print("\n".join(["", *cost_table(stage_costs(cells, args, measurements, scales))]))


def hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.0f}" if h >= 100 else f"{h:.1f}" if h >= 1 else f"{h:.2g}"


def cost_table(costs: list[StageCost]) -> list[str]:
    """The projection as a markdown table, and whether the figure needs GPUs."""
    tune, final = costs
    lines = [
        f"| stage | jobs | env-steps | hours on this machine ({os.cpu_count()} cores) | "
        "longest job, hours |",
        "|---|---|---|---|---|",
    ]
    for cost in (tune, final):
        lines.append(
            f"| {cost.stage} | {cost.jobs} | {cost.env_steps:.3g} | {hours(cost.seconds)} | "
            f"{hours(cost.longest)} |"
        )
        if cost.stage == "tune":
            lines.append(f"| select | {tune.jobs} | 0 | seconds | |")
    lines.append("| plot | 1 | 0 | seconds | |")
    total = tune.seconds + final.seconds
    if final.seconds / 3600 > NEEDS_GPUS_HOURS:
        lines.append(
            f"\nThe full figure needs GPUs: its final runs alone take {hours(final.seconds)} h "
            f"on this machine ({hours(total)} h with tuning). On a SLURM cluster each cell is a "
            "job: --executor slurm --gpus-per-job 1."
        )
    else:
        lines.append(f"\nThis fits this machine: {hours(total)} h in all.")
    return lines


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def number(kind, minimum, strict: bool = False):
    """An argparse type: an int or finite float >= minimum (> minimum when strict)."""
    name = {int: "an integer", float: "a number"}[kind]
    bound = f"{'>' if strict else '>='} {minimum}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        low = value > minimum if strict else value >= minimum
        if not (low and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {name} {bound}, got {text!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from plot_metric import OneLineErrorParser  # one line naming the flag, exit status 2

    p = OneLineErrorParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument(
        "--stage",
        nargs="+",
        choices=STAGES,
        default=["final", "plot"],
        metavar="STAGE",
        help="of tune select final plot, run in that order (default: final plot)",
    )
    for flag, names in (("agents", AGENTS), ("envs", ENVIRONMENTS), ("regimes", REGIMES)):
        p.add_argument(
            f"--{flag}",
            nargs="+",
            choices=list(names),
            default=list(names),
            metavar=flag[:-1].upper(),
            help=f"cells' {flag} (default all: {' '.join(names)})",
        )
    p.add_argument(
        "--out-dir",
        help="where every output and log lands (default figure4_runs, "
        "or figure4_quick with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="toy sizes: every stage in minutes")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print the projected wall time of each stage here; run nothing",
    )
    p.add_argument(
        "--hyperparameters",
        choices=("table", "selected"),
        default="table",
        help="final: the reference table's values or the select stage's",
    )
    p.add_argument(
        "--tune-seeds",
        type=number(int, 1),
        help=f"seeds per grid point (default {TUNE_SEEDS}, --quick {QUICK_TUNE_SEEDS})",
    )
    p.add_argument(
        "--step-sizes",
        nargs="+",
        type=number(float, 0, strict=True),
        help="tune grid's step sizes (default 3.125e-6 * 2**k, k = 0..9)",
    )
    p.add_argument(
        "--temperatures",
        nargs="+",
        type=number(float, 0, strict=True),
        help="tune grid's softmax temperatures (default 0.0125 * 2**k, k = 0..10)",
    )
    p.add_argument("--seed", type=number(int, 0), default=0, help="master PRNG seed of every run")
    p.add_argument(
        "--window",
        type=number(int, 1),
        help="plot: moving average over evaluations (default 1/50 of the run)",
    )
    p.add_argument("--executor", choices=("inline", "local", "slurm"), default="inline")
    p.add_argument(
        "--parallel", type=number(int, 1), default=2, help="local: jobs running at once (default 2)"
    )
    p.add_argument(
        "--time",
        type=number(int, 1),
        help=f"minutes per job (default: slurm {SLURM_DEFAULT_MIN}, local no limit)",
    )
    p.add_argument(
        "--gpus-per-job", type=number(int, 0), help="GPUs per job (default: slurm 1, local 0)"
    )
    p.add_argument("--cpus-per-job", type=number(int, 1), default=8, help="slurm: CPUs per job")
    p.add_argument("--mem-gb", type=number(float, 1), help="slurm: memory per job in GB")
    p.add_argument("--slurm-partition", help="slurm: the partition")
    p.add_argument(
        "--slurm-array-parallelism",
        type=number(int, 1),
        default=64,
        help="slurm: jobs of the array running at once (default 64)",
    )
    return p


def resolve(args) -> argparse.Namespace:
    """Fill the defaults that depend on --quick; check flags that argparse cannot."""
    slurm_only = ("cpus_per_job", "mem_gb", "slurm_partition", "slurm_array_parallelism")
    defaults = build_parser().parse_args([])
    for name in slurm_only:
        if args.executor != "slurm" and getattr(args, name) != getattr(defaults, name):
            raise UserError(f"--{name.replace('_', '-')}: only with --executor slurm")
    if args.executor == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--executor slurm: sbatch not found: this is not a SLURM login node")
    fill = {
        "out_dir": "figure4_quick" if args.quick else "figure4_runs",
        "tune_seeds": QUICK_TUNE_SEEDS if args.quick else TUNE_SEEDS,
        "step_sizes": QUICK_STEP_SIZES if args.quick else STEP_SIZES,
        "temperatures": QUICK_TEMPERATURES if args.quick else TEMPERATURES,
    }
    resolved = {k: v if v is not None else fill.get(k) for k, v in vars(args).items()}
    for flag in ("step_sizes", "temperatures"):
        if len(set(resolved[flag])) < len(resolved[flag]):
            raise UserError(f"--{flag.replace('_', '-')}: a value is given twice")
    resolved["out_dir"] = os.path.abspath(resolved["out_dir"])
    resolved["stage"] = [stage for stage in STAGES if stage in args.stage]
    return argparse.Namespace(**resolved)


def chosen_cells(args) -> list[Cell]:
    return [
        Cell(a, e, r)
        for a in AGENTS
        if a in args.agents
        for e in ENVIRONMENTS
        if e in args.envs
        for r in REGIMES
        if r in args.regimes
    ]


def run(args) -> None:
    cells = chosen_cells(args)
    if args.estimate:
        run_estimate(cells, args)
        return
    for stage in args.stage:
        if stage == "tune":
            run_stage([tune_job(cell, args) for cell in cells], args)
        elif stage == "select":
            run_select(cells, args)
        elif stage == "final":
            run_stage([final_job(cell, args) for cell in cells], args)
        else:
            run_plot(args)


def main(argv=None) -> int:
    parser = build_parser()
    try:
        run(resolve(parser.parse_args(argv)))
    except UserError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")
    return 0


if __name__ == "__main__":
    # Run as a script this module is `__main__`, which submitit would pickle by value; importing
    # it under its own name makes `run_job` pickle by reference, as it does from the tests.
    import reproduce_figure4

    sys.exit(reproduce_figure4.main())
