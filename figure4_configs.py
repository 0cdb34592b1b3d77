"""The cells of Figure 4 as data, and the 30 configs they generate (SPEC §2).

    python figure4_configs.py        # (re)writes configs/figure4/<agent>_<env>_<regime>.json

A cell is an agent × environment × data regime. Its config is the agent's shipped config
(`configs/*.json`, High Data ProcMaze) with the cell's environment, `episodic_env`, the regime's
settings and the step size and softmax temperature of the reference README's Figure 4 table.
The table is typed in here once; `tests/test_figure4.py` parses the seed README itself and checks
every generated file against it. Running this script again rewrites the same bytes.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

ROOT = os.path.dirname(os.path.abspath(__file__))
CONFIG_DIR = os.path.join(ROOT, "configs", "figure4")


class AgentSpec(NamedTuple):
    module: str  # the training script, loaded by name by the drivers
    agent_type: str  # experiment.main's agent type (also in the .out's config)
    shipped_config: str  # relative to the repository root
    step_size_key: str  # where the table's "Step-Size" goes (SPEC §2)
    label: str  # legend of Figure 4


class EnvSpec(NamedTuple):
    env_config: dict  # ProcMaze as the shipped configs; the others at their defaults (SPEC §2)
    episodic: bool  # ButtonGrid and PanFlute are continuing


class Cell(NamedTuple):
    agent: str
    env: str
    regime: str

    @property
    def name(self) -> str:
        return f"{self.agent}_{self.env}_{self.regime}"


AGENTS = {
    "ER": AgentSpec("train_ER_DQN", "ER", "configs/ER.json", "alpha_adam", "ER"),
    "perfect_model": AgentSpec(
        "train_perfect_model_DQN",
        "perfect_model",
        "configs/perfect_model.json",
        "alpha_adam",
        "perfect model",
    ),
    "simple_model": AgentSpec(
        "train_simple_model_DQN",
        "simple_model",
        "configs/simple_model.json",
        "Q_alpha",
        "simple model",
    ),
    "categorical_latent": AgentSpec(
        "train_latent_model_DQN",
        "latent_model",
        "configs/categorical_latent_model.json",
        "Q_alpha",
        "categorical latent model",
    ),
    "gaussian_latent": AgentSpec(
        "train_latent_model_DQN",
        "latent_model",
        "configs/gaussian_latent_model.json",
        "Q_alpha",
        "Gaussian latent model",
    ),
}
ENVIRONMENTS = {
    "ProcMaze": EnvSpec({"grid_size": 4}, True),
    "ButtonGrid": EnvSpec({}, False),
    "PanFlute": EnvSpec({}, False),
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


def all_cells() -> list[Cell]:
    return [Cell(a, e, r) for a in AGENTS for e in ENVIRONMENTS for r in REGIMES]


def config_path(cell: Cell) -> str:
    return os.path.join(CONFIG_DIR, f"{cell.name}.json")


def shipped_config(agent: str) -> dict:
    with open(os.path.join(ROOT, AGENTS[agent].shipped_config)) as f:
        return json.load(f)


def with_hyperparameters(raw: dict, agent: str, step_size: float, temperature: float) -> dict:
    """`raw` with the table's two tuned values in place; `model_alpha` stays as shipped."""
    return {**raw, AGENTS[agent].step_size_key: step_size, "softmax_temp": temperature}


def cell_config(cell: Cell) -> dict:
    """The shipped config of the cell's agent, moved to the cell (keys keep the shipped order;
    `updates_per_step` is new in the low regime and goes last)."""
    env = ENVIRONMENTS[cell.env]
    raw = {
        **shipped_config(cell.agent),
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


def main() -> None:
    # Imported here, not at the top: the drivers import this module for its tables, and
    # `reproduce_figure4.py --stage plot` must run without jax (as plot_metric.py does).
    import config

    files = generate()
    for cell in all_cells():  # every config must load before any file is written
        config.validate_config(cell_config(cell), AGENTS[cell.agent].agent_type)
    os.makedirs(CONFIG_DIR, exist_ok=True)
    for path, text in files.items():
        with open(path, "w") as f:
            f.write(text)
    print(f"wrote {len(files)} configs to {os.path.relpath(CONFIG_DIR)}/")


if __name__ == "__main__":
    main()
