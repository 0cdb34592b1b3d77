"""The projected cost of Figure 4 on this machine (`reproduce_figure4.py --estimate`).

Each agent's run on its ProcMaze high-data config is set up as any run is
(`experiment.prepare`) and timed as the benchmark times it (`measure.time_run`): compilation, a
chunk with training off, a chunk with one update per step, an evaluation. Each job is projected
as compile time + steps x acting time + updates x update time + evaluations x evaluation time,
linear in seeds; the other environments' update time is scaled by their matmul FLOPs per update
(each agent's `flops_per_step`), and a tune job counts every grid point's seeds.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import environments
from agent_registry import AGENTS
from figure4.plan import Cell, Plan, final_job, sized, table_config, tune_job
from training import experiment, measure

MEASURE_STEPS = 25  # environment steps per timed chunk
NEEDS_GPUS_HOURS = 24.0


class Measurement(NamedTuple):
    """One agent timed after compilation, on its ProcMaze high-data config."""

    seeds: int
    compile_s: float  # tracing, lowering and XLA compilation of init, chunk and evaluate
    act_s: float  # one environment step of all seeds, training off (acting, env, storing)
    update_s: float  # one update of all seeds: a training-on step minus a training-off step
    eval_s: float  # one evaluation of all seeds
    raw: dict  # the config measured


def measure_agent(agent: str, raw: dict, seeds: int, steps: int = MEASURE_STEPS) -> Measurement:
    """Compile the agent's run (no persistent cache: a first launch) and time a training-off
    chunk, a training-on chunk and an evaluation of `steps` environment steps."""
    spec = AGENTS[agent]
    raw = {**raw, "num_seeds": seeds, "eval_frequency": steps, "num_steps": 2 * steps}
    raw.update(training_start_time=0, save_params=False, updates_per_step=1)
    setup = experiment.prepare(spec.definition, raw)
    # Acting first also fills the buffer a little; each call runs after its compilation.
    timing, _ = measure.time_run(setup, off_chunks=1, on_chunks=1)
    act, train = timing.off_s[0], timing.on_s[0]
    update = max(train - act, 0.0) / steps
    return Measurement(seeds, timing.compile_s, act / steps, update, timing.eval_s, raw)


def update_flops(definition, cfg: dict) -> float:
    """Matmul FLOPs of one update of one seed (one update minus none), used to carry the
    measured update time from ProcMaze to the other environments."""
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    sizes = env.observation_size, env.num_actions()
    one = definition.flops_per_step({**cfg, "updates_per_step": 1}, *sizes)
    return one - definition.flops_per_step({**cfg, "updates_per_step": 0}, *sizes)


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


def stage_costs(cells: list[Cell], plan: Plan, measurements: dict, scales: dict):
    """The tune and final stages' costs; final at the table's values."""
    tune = [tune_job(cell, plan) for cell in cells]
    final = [final_job(cell, plan._replace(hyperparameters="table")) for cell in cells]
    costs = []
    for stage, jobs in (("tune", tune), ("final", final)):
        steps, seconds = 0, []
        for job in jobs:
            cfg = job.outputs[0].expected
            seeds = cfg["num_seeds"] * len(job.outputs)  # grid points x seeds per point
            steps += cfg["num_steps"] * seeds
            seconds.append(job_seconds(measurements[job.cell.agent], cfg, seeds, scales[job.cell]))
        costs.append(StageCost(stage, len(jobs), steps, sum(seconds), max(seconds)))
    return costs


def run_estimate(cells: list[Cell], plan: Plan) -> None:
    agents = sorted({cell.agent for cell in cells}, key=list(AGENTS).index)
    seeds = sized(AGENTS["ER"].shipped(), plan.preset)["num_seeds"]  # the final stage's
    measurements, scales = {}, {}
    shrunk = " (preset sizes)" if plan.preset.sizes else ""
    print(
        f"measuring each agent on its ProcMaze high-data config{shrunk}, {seeds} seeds (the "
        f"final stage's), {MEASURE_STEPS} steps training off, {MEASURE_STEPS} steps with one "
        "update per step, 2 evaluations, after compiling (no compilation cache):",
        flush=True,
    )
    for agent in agents:
        raw = sized(table_config(Cell(agent, "ProcMaze", "high")), plan.preset)
        m = measure_agent(agent, raw, seeds)
        measurements[agent] = m
        print(
            f"  {agent}: compile {m.compile_s:.1f} s; per step of {seeds} seeds "
            f"{1e3 * m.act_s:.2f} ms acting + {1e3 * m.update_s:.2f} ms per update; "
            f"evaluation {m.eval_s:.2f} s",
            flush=True,
        )
    for cell in cells:
        definition = AGENTS[cell.agent].definition
        base = update_flops(definition, measurements[cell.agent].raw)
        cfg = sized(table_config(cell), plan.preset)
        scales[cell] = update_flops(definition, cfg) / base
    print(
        "projection: time linear in seeds × steps; low data counts 10 updates per step at the "
        "measured update time; ButtonGrid and PanFlute scale the update time by their matmul "
        "FLOPs per update (each agent's flops_per_step) relative to ProcMaze; tune runs "
        f"{len(plan.step_sizes)} × {len(plan.temperatures)} points × {plan.tune_seeds} seeds "
        "per cell at the measured time per seed; every job compiles once"
    )
    print("\n".join(["", *cost_table(stage_costs(cells, plan, measurements, scales))]))


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
