"""The agents of Figure 4, by name: the one table that says where each agent lives.

A name is what the drivers and the plots call an agent (`python reproduce_figure4.py --agents
ER simple_model`, `python benchmark.py --agents ...`). Both latent agents are one training
script with two shipped configs. To add an agent: write its `train_<agent>.py` (an
`AGENT_TYPE` and a `build_agent`), give it a shipped config, and add one row here.
"""

from __future__ import annotations

import json
import os
from types import ModuleType
from typing import NamedTuple

import train_ER_DQN
import train_latent_model_DQN
import train_perfect_model_DQN
import train_simple_model_DQN
from training import experiment

ROOT = os.path.dirname(os.path.abspath(__file__))


class AgentSpec(NamedTuple):
    module: ModuleType  # the training script: its AGENT_TYPE and build_agent
    shipped_config: str  # relative to the repository root (SPEC §2: High Data ProcMaze)
    step_size_key: str  # the Q network's step size: where the table's "Step-Size" goes
    label: str  # legend of Figure 4

    @property
    def agent_type(self) -> str:
        """The config's `agent_type` (which keys it reads, `training/schema.py`)."""
        return self.module.AGENT_TYPE

    @property
    def build_agent(self) -> experiment.BuildAgent:
        return self.module.build_agent

    def shipped(self) -> dict:
        """The shipped config, as the file has it."""
        with open(os.path.join(ROOT, self.shipped_config)) as f:
            return json.load(f)

    def run(self, cfg, output: str, **flags) -> experiment.Written:
        """`experiment.run` of this agent: `cfg` a dict or a JSON path; flags `seed`,
        `resume`, `quiet`."""
        return experiment.run(self.agent_type, self.build_agent, cfg, output, **flags)


AGENTS = {
    "ER": AgentSpec(train_ER_DQN, "configs/ER.json", "alpha_adam", "ER"),
    "perfect_model": AgentSpec(
        train_perfect_model_DQN, "configs/perfect_model.json", "alpha_adam", "perfect model"
    ),
    "simple_model": AgentSpec(
        train_simple_model_DQN, "configs/simple_model.json", "Q_alpha", "simple model"
    ),
    "categorical_latent": AgentSpec(
        train_latent_model_DQN,
        "configs/categorical_latent_model.json",
        "Q_alpha",
        "categorical latent model",
    ),
    "gaussian_latent": AgentSpec(
        train_latent_model_DQN,
        "configs/gaussian_latent_model.json",
        "Q_alpha",
        "Gaussian latent model",
    ),
}
