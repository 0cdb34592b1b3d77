"""What the run machinery needs of an agent's module: its `AgentDefinition`.

Each `train_<agent>.py` ends with one `DEFINITION = AgentDefinition(...)`, and the registry
(`agent_registry.py`) lists the definitions by name. Nothing under `training/` names an agent:
the config's keys an agent takes come from the key families it declares (`schema.keys_of`), its
FLOP count from its own function, its step-size key from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from agents import Agent
from training import schema


class AgentDefinition(NamedTuple):
    """One agent, as the machinery sees it."""

    agent_type: str  # the config's `agent_type`, written into every `.out` it produces
    # (validated config, environment) -> the agent's pure functions (`agents.Agent`)
    build_agent: Callable[[dict, Any], Agent]
    step_size_key: str  # the Q network's step size: where Figure 4's "Step-Size" goes
    families: tuple[str, ...]  # the key families it reads beyond every agent's (`schema`)
    # (validated config, observation size, number of actions) -> matmul FLOPs of one
    # environment step of one seed with `updates_per_step` updates (`agents.mlp_flops`)
    flops_per_step: Callable[[dict, int, int], int]

    @property
    def keys(self) -> frozenset[str]:
        """The config keys it accepts."""
        return schema.keys_of(self.families)
