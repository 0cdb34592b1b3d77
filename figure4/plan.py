"""The plan of Figure 4: its table, its 30 cells' configs, and the jobs of each stage.

    python -m figure4.plan        # (re)writes configs/figure4/<agent>_<env>_<regime>.json

A cell is an agent x environment x data regime (SPEC section 2). Its config is the agent's
shipped config (`configs/*.json`, High Data ProcMaze) with the cell's environment,
`episodic_env`, the regime's settings and the step size and softmax temperature of the reference
README's Figure 4 table, which is typed in here once (`tests/test_figure4.py` parses the seed
README itself and checks every generated file against it; running this module again rewrites
the same bytes). A stage runs one job per cell: `tune_job` (a grid over step size x temperature,
whose axes the job carries to `select`) and `final_job` (the config's seeds at the table's or
the selected values). A preset (`--quick`) shrinks the sizes of every job alike.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import environments
from agent_registry import AGENTS, ROOT
from training import config, paths, results
from training.files import write_atomic
from training.schema import same_value

CONFIG_DIR = os.path.join(ROOT, "configs", "figure4")
STAGES = ("tune", "select", "final", "plot")
METRIC = results.DEFAULT_METRIC


class EnvSpec(NamedTuple):
    env_config: dict  # ProcMaze as the shipped configs; the others at their defaults (SPEC §2)
    episodic: bool  # the environment's own (`environments.Environment.episodic`)


class Cell(NamedTuple):
    agent: str
    env: str
    regime: str

    @property
    def name(self) -> str:
        return f"{self.agent}_{self.env}_{self.regime}"


# The paper's environments and the env_config of each in Figure 4.
FIGURE4_ENV_CONFIGS = {"ProcMaze": {"grid_size": 4}, "ButtonGrid": {}, "PanFlute": {}}
ENVIRONMENTS = {
    name: EnvSpec(env_config, environments.ENVIRONMENTS[name].episodic)
    for name, env_config in FIGURE4_ENV_CONFIGS.items()
}
# The shipped configs are the High Data regime; Low Data changes these four keys (SPEC §2).
REGIMES = {
    "high": {},
    "low": {
        "target_update_frequency": 10,
        "updates_per_step": 10,
        "num_steps": 100000,
        "eval_frequency": 50,
    },
}

# (step size, softmax temperature) per agent, environment and regime: the reference README's
# "Optimal Hyperparameters for Figure 4" table.
TABLE = {
    "ER": {
        "ProcMaze": {"high": (5e-05, 0.1), "low": (2.5e-05, 1.6)},
        "ButtonGrid": {"high": (5e-05, 0.0125), "low": (2.5e-05, 0.1)},
        "PanFlute": {"high": (0.0001, 0.1), "low": (3.125e-06, 0.8)},
    },
    "perfect_model": {
        "ProcMaze": {"high": (0.0001, 0.4), "low": (0.0004, 0.4)},
        "ButtonGrid": {"high": (0.0002, 0.0125), "low": (0.0002, 0.0125)},
        "PanFlute": {"high": (0.0002, 0.1), "low": (0.0001, 0.1)},
    },
    "simple_model": {
        "ProcMaze": {"high": (0.0002, 0.8), "low": (2.5e-05, 0.4)},
        "ButtonGrid": {"high": (0.0002, 1.6), "low": (5e-05, 0.4)},
        "PanFlute": {"high": (0.0001, 0.4), "low": (0.0002, 0.2)},
    },
    "categorical_latent": {
        "ProcMaze": {"high": (0.0002, 1.6), "low": (0.0001, 0.8)},
        "ButtonGrid": {"high": (0.0001, 0.05), "low": (0.0002, 0.1)},
        "PanFlute": {"high": (0.0008, 0.05), "low": (0.0016, 0.05)},
    },
    "gaussian_latent": {
        "ProcMaze": {"high": (3.125e-06, 12.8), "low": (3.125e-06, 0.8)},
        "ButtonGrid": {"high": (1.25e-05, 0.1), "low": (2.5e-05, 0.8)},
        "PanFlute": {"high": (0.0002, 0.1), "low": (0.0002, 0.1)},
    },
}

# The table's step sizes and temperatures are powers of two apart (3.125e-6 ... 1.6e-3 and
# 0.0125 ... 12.8), so the grid they came from is taken to be those powers of two.
STEP_SIZES = tuple(3.125e-6 * 2**k for k in range(10))
TEMPERATURES = tuple(0.0125 * 2**k for k in range(11))
TUNE_SEEDS = 5


class Preset(NamedTuple):
    """Sizes that replace a config's own in every job (only keys the config has), and the
    defaults of a run of the driver at them: its folder, tune grid and cells."""

    sizes: dict
    out_dir: str
    step_sizes: tuple
    temperatures: tuple
    tune_seeds: int
    envs: tuple = tuple(ENVIRONMENTS)
    regimes: tuple = tuple(REGIMES)


PRESETS = {
    # Every stage of every cell in seconds on a laptop CPU; rollout_length only reaches the
    # rollout agents, the latent sizes only the latent agents; the regimes keep their update
    # and target settings. Tiny networks learn anything in 200 steps only with fast steps.
    "quick": Preset(
        sizes={
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
        },
        out_dir="figure4_quick",
        step_sizes=(8e-4, 1.6e-3),
        temperatures=(0.1, 0.8),
        tune_seeds=2,
    ),
    # The paper's comparison at a size a laptop runs in about an hour on 2 cores: the five
    # agents on PanFlute, high data, at the table's values with the shipped networks, batches,
    # buffers and rollouts; only the run is smaller. Its tune stage (off by default) would be
    # the full grid: give --step-sizes and --temperatures to make it fit.
    "laptop": Preset(
        sizes={
            "num_seeds": 8,  # 30 in the paper; 8 still give an interval over seeds
            # 1M in the paper. On PanFlute the agents part early; 15 000 steps of the five take
            # about an hour here, half of it the categorical latent's (58 env-steps/s at 8 seeds)
            "num_steps": 15000,
            "eval_frequency": 250,  # 500 shipped: 60 points per curve rather than 30
        },
        out_dir="figure4_laptop",
        step_sizes=STEP_SIZES,
        temperatures=TEMPERATURES,
        tune_seeds=2,
        envs=("PanFlute",),
        regimes=("high",),
    ),
}
FULL = Preset({}, "figure4_runs", STEP_SIZES, TEMPERATURES, TUNE_SEEDS)


class Plan(NamedTuple):
    """What a run of the driver does to each cell (its flags, resolved)."""

    out_dir: str
    preset: Preset
    step_sizes: tuple
    temperatures: tuple
    tune_seeds: int
    seed: int  # the master seed of every run
    hyperparameters: str  # final: "table" or "selected"


class Output(NamedTuple):
    path: str  # a .out file
    expected: dict  # config values (seed included) it must hold to be this job's output


class Job(NamedTuple):
    stage: str
    cell: Cell
    raw: dict  # the config to run; a grid's axes are lists
    axes: dict  # a grid's axes as the job built them ({} for a final run)
    config_path: str  # where the driver keeps a copy of `raw`, for the record
    prefix: str  # the run's output prefix
    outputs: tuple  # of Output: one per grid point


# --------------------------------------------------------------------------------------------
# The 30 configs
# --------------------------------------------------------------------------------------------


def all_cells() -> list[Cell]:
    return [Cell(a, e, r) for a in TABLE for e in ENVIRONMENTS for r in REGIMES]


def config_path(cell: Cell) -> str:
    return os.path.join(CONFIG_DIR, f"{cell.name}.json")


def with_hyperparameters(raw: dict, agent: str, step_size: float, temperature: float) -> dict:
    """`raw` with the table's two tuned values in place; `model_alpha` stays as shipped."""
    return {**raw, AGENTS[agent].step_size_key: step_size, "softmax_temp": temperature}


def cell_config(cell: Cell) -> dict:
    """The shipped config of the cell's agent, moved to the cell (keys keep the shipped order;
    `updates_per_step` is new in the low regime and goes last)."""
    env = ENVIRONMENTS[cell.env]
    raw = {
        **AGENTS[cell.agent].shipped(),
        "environment": cell.env,
        "episodic_env": env.episodic,
        "env_config": dict(env.env_config),
        **REGIMES[cell.regime],
    }
    return with_hyperparameters(raw, cell.agent, *TABLE[cell.agent][cell.env][cell.regime])


def config_text(raw: dict) -> str:
    return json.dumps(raw, indent=2) + "\n"


def generate() -> dict[str, str]:
    """Path -> file text of every cell's config."""
    return {config_path(cell): config_text(cell_config(cell)) for cell in all_cells()}


def table_config(cell: Cell) -> dict:
    """The cell's committed config (configs/figure4), so a hand edit of it is honoured."""
    with open(config_path(cell)) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------
# Each stage's jobs
# --------------------------------------------------------------------------------------------


def sized(raw: dict, preset: Preset) -> dict:
    return {**raw, **{key: value for key, value in preset.sizes.items() if key in raw}}


def selected_path(out_dir: str, cell: Cell) -> str:
    return os.path.join(out_dir, "selected", f"{cell.name}.json")


def final_dir(out_dir: str, hyperparameters: str) -> str:
    # Separate folders, so that runs at the table's and at the selected values never mix.
    return os.path.join(out_dir, "final" if hyperparameters == "table" else "final_selected")


def tune_job(cell: Cell, plan: Plan) -> Job:
    """One grid run over step size x temperature; `axes` go with the job to `select`."""
    key = AGENTS[cell.agent].step_size_key
    # No parameter files: a grid has hundreds of runs, and select needs only the returns.
    raw = {**sized(table_config(cell), plan.preset), "num_seeds": plan.tune_seeds}
    raw["save_params"] = False
    axes = {key: list(plan.step_sizes), "softmax_temp": list(plan.temperatures)}
    grid = {**raw, **axes}
    prefix = os.path.join(plan.out_dir, "tune", cell.name)
    points = config.grid_points(grid)
    outputs = [  # the grid run's own names for its points' files
        Output(paths.out(point_prefix), {**raw, **{k: point[k] for k in axes}, "seed": plan.seed})
        for point, point_prefix in zip(
            points, paths.point_prefixes(prefix, points, config.grid_axes(grid)), strict=True
        )
    ]
    return Job("tune", cell, grid, axes, prefix + ".json", prefix, tuple(outputs))


def final_job(cell: Cell, plan: Plan) -> Job:
    """The config's seeds at the table's values, or at those `select` wrote."""
    if plan.hyperparameters == "table":
        raw = table_config(cell)
    else:
        with open(selected_path(plan.out_dir, cell)) as f:
            raw = json.load(f)
    raw = sized(raw, plan.preset)
    prefix = os.path.join(final_dir(plan.out_dir, plan.hyperparameters), cell.name)
    output = Output(paths.out(prefix), {**raw, "seed": plan.seed})
    return Job("final", cell, raw, {}, prefix + ".json", prefix, (output,))


def cells_with_outputs(folder: str) -> list[Cell]:
    """The cells with a final `.out` in `folder`, in the figure's order."""
    return [
        cell for cell in all_cells() if os.path.exists(os.path.join(folder, f"{cell.name}.out"))
    ]


FINISHED, UNFINISHED, OTHER_VERSION = "finished", "unfinished", "another version"


def output_state(output: Output, versions: dict) -> str:
    """FINISHED: the `.out` loads, holds every evaluation of its config, that config is the
    job's (a stale file of other settings is not this job's result), and this version of the
    code and its libraries (`provenance.versions()`) wrote it; OTHER_VERSION: all of that but
    the last; UNFINISHED otherwise."""
    expected = output.expected
    try:
        record = results.load_out(output.path)
    except results.ResultsError:  # missing, cut short, damaged
        return UNFINISHED
    evaluations = expected["num_steps"] // expected["eval_frequency"]
    saved = results.out_config(record)
    if len(record["metrics"].get(results.TIMES_KEY, [])) != evaluations or not all(
        key in saved and same_value(value, saved[key]) for key, value in expected.items()
    ):
        return UNFINISHED
    produced_by = record.get(results.PROVENANCE_KEY, {})
    same = all(produced_by.get(key) == value for key, value in versions.items())
    return FINISHED if same else OTHER_VERSION


def job_state(job: Job, versions: dict) -> str:
    """The state of a job's outputs: FINISHED when all are, UNFINISHED when any is, else
    OTHER_VERSION."""
    states = {output_state(output, versions) for output in job.outputs}
    return (
        UNFINISHED
        if UNFINISHED in states
        else OTHER_VERSION
        if OTHER_VERSION in states
        else FINISHED
    )


def main() -> None:
    files = generate()
    for cell in all_cells():  # every config must load before any file is written
        config.validate_config(cell_config(cell), AGENTS[cell.agent].definition)
    os.makedirs(CONFIG_DIR, exist_ok=True)
    for path, text in files.items():
        write_atomic(path, lambda f, text=text: f.write(text.encode()))
    print(f"wrote {len(files)} configs to {os.path.relpath(CONFIG_DIR)}/")


if __name__ == "__main__":
    main()
