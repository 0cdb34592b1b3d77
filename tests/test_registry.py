"""The registry is the one list of agents: every other list is derived from it or checked
against it here, and nothing under `training/` names an agent."""

import os
import re

import pytest

import agents
import benchmark
from agent_registry import AGENTS, ROOT
from figure4 import plan
from training import schema

DEFINITIONS = {spec.agent_type: spec.definition for spec in AGENTS.values()}


@pytest.mark.parametrize("name", list(AGENTS))
def test_each_definition_is_what_the_machinery_needs(name):
    spec = AGENTS[name]
    definition = spec.definition
    assert definition.keys <= set(schema.SCHEMA)
    assert set(definition.families) <= set(schema.FAMILIES)
    # The step size the Figure 4 table sets is a traced key the agent reads.
    assert definition.step_size_key in definition.keys
    assert schema.SCHEMA[definition.step_size_key].role == schema.TRACED
    # Its shipped config holds exactly keys it takes.
    assert set(spec.shipped()) <= definition.keys
    assert os.path.exists(os.path.join(ROOT, spec.shipped_config))


def test_every_key_is_read_by_some_agent():
    read = set().union(*(d.keys for d in DEFINITIONS.values()))
    assert read == set(schema.SCHEMA)


def test_the_paper_tables_name_registered_agents():
    assert set(plan.TABLE) <= set(AGENTS)
    assert set(benchmark.REFERENCE) <= set(AGENTS)


def test_key_families_are_checked():
    with pytest.raises(ValueError, match="unknown key families"):
        schema.keys_of(("no such family",))


def test_no_agent_is_named_under_training():
    """The run machinery knows agents only through their definitions."""
    names = set(AGENTS) | set(DEFINITIONS)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    folder = os.path.join(ROOT, "training")
    hits = []
    for file in sorted(os.listdir(folder)):
        if file.endswith(".py"):
            with open(os.path.join(folder, file)) as f:
                for number, line in enumerate(f, 1):
                    if pattern.search(line):
                        hits.append(f"training/{file}:{number}: {line.strip()}")
    assert hits == []


def flops_cfg(**changes):
    cfg = {"num_hidden_units": 8, "num_hidden_layers": 2, "batch_size": 4, "rollout_length": 5}
    return {**cfg, **changes}


def test_er_flops_per_step_counted_from_layer_sizes():
    flops = AGENTS["ER"].definition.flops_per_step
    q = 2 * (6 * 8 + 8 * 8 + 8 * 3)  # forward of one sample through 6 -> 8 -> 8 -> 3
    assert agents.mlp_flops(6, 3, flops_cfg()) == q
    assert flops(flops_cfg(), 6, 3) == q + 4 * 4 * q  # acting, then fwd+bwd (3) + target (1)
    assert flops(flops_cfg(double_DQN=True), 6, 3) == q + 4 * 5 * q
    assert flops(flops_cfg(updates_per_step=2), 6, 3) == q + 2 * 4 * 4 * q


def test_perfect_model_flops_count_the_rollouts():
    flops = AGENTS["perfect_model"].definition.flops_per_step
    q = agents.mlp_flops(6, 3, flops_cfg())
    # acting; per update B*L rollout forwards, then a Q step on the B*L transitions
    assert flops(flops_cfg(), 6, 3) == q + 4 * 5 * q + 4 * 5 * 4 * q
