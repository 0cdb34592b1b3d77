"""The agents of Figure 4, by name: the one table that says where each agent lives.

A name is what the drivers and the plots call an agent (`python reproduce_figure4.py --agents
ER simple_model`, `python benchmark.py --agents ...`). Both latent agents are one training
script with two shipped configs. To add an agent: write its `train_<agent>.py`, ending with its
`DEFINITION` (`training.definition.AgentDefinition`: its type, `build_agent`, step-size key, key
families and FLOP count), give it a shipped config, and add one row here (README, "Adding an
agent"). Everything else (the CLI, the benchmark's rows, the Figure 4 driver's agents, the
tests' agent lists) reads this table.
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
from training.definition import AgentDefinition

ROOT = os.path.dirname(os.path.abspath(__file__))


class AgentSpec(NamedTuple):
    module: ModuleType  # the training script, ending with its `DEFINITION`
    shipped_config: str  # relative to the repository root (design §2: High Data ProcMaze)
    label: str  # legend of Figure 4

    @property
    def definition(self) -> AgentDefinition:
        return self.module.DEFINITION

    @property
    def agent_type(self) -> str:
        """The config's `agent_type` (which keys it reads: its definition's families)."""
        return self.definition.agent_type

    @property
    def step_size_key(self) -> str:
        """The Q network's step size: where the Figure 4 table's "Step-Size" goes."""
        return self.definition.step_size_key

    def shipped(self) -> dict:
        """The shipped config, as the file has it."""
        with open(os.path.join(ROOT, self.shipped_config)) as f:
            return json.load(f)

    def run(self, cfg, output: str, **flags) -> experiment.Written:
        """`experiment.run` of this agent: `cfg` a dict or a JSON path; flags `seed`,
        `resume`, `quiet`."""
        return experiment.run(self.definition, cfg, output, **flags)


AGENTS = {
    "ER": AgentSpec(train_ER_DQN, "configs/ER.json", "ER"),
    "perfect_model": AgentSpec(
        train_perfect_model_DQN, "configs/perfect_model.json", "perfect model"
    ),
    "simple_model": AgentSpec(train_simple_model_DQN, "configs/simple_model.json", "simple model"),
    "categorical_latent": AgentSpec(
        train_latent_model_DQN, "configs/categorical_latent_model.json", "categorical latent model"
    ),
    "gaussian_latent": AgentSpec(
        train_latent_model_DQN, "configs/gaussian_latent_model.json", "Gaussian latent model"
    ),
}
