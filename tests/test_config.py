"""Config validation (`training/config.py`, `training/schema.py`): defaults, one line naming
the key for every bad value, before anything is compiled; the README's key table is `SCHEMA`'s."""

import os

import jax.numpy as jnp
import pytest
from helpers import ROOT, definition, tiny_config

import environments
from agent_registry import AGENTS
from training import config, schema

# ------------------------------------------------------------------------------------------
# Config validation: one line naming the key, before anything is compiled
# ------------------------------------------------------------------------------------------


def config_error(raw, name="ER") -> str:
    with pytest.raises(config.ConfigError) as info:
        config.validate_config(raw, definition(name))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", list(AGENTS))
def test_shipped_configs_validate(name):
    path = os.path.join(ROOT, AGENTS[name].shipped_config)
    cfg = config.load_config(path, definition(name))
    assert cfg["num_seeds"] == 30 and cfg["num_steps"] == 1_000_000
    assert cfg["env_config"] == {"grid_size": 4} and cfg["episodic_env"] is True


def test_defaults_filled_in():
    raw = tiny_config("ER")
    for key in ("save_params", "double_DQN", "updates_per_step", "episodic_env"):
        raw.pop(key, None)
    cfg = config.validate_config(raw, definition("ER"))
    assert cfg["save_params"] is True
    assert cfg["double_DQN"] is False
    assert cfg["updates_per_step"] == 1
    assert cfg["episodic_env"] is False  # the reference's default is *continuing*
    assert cfg["fresh_obs_on_reset"] is False  # quirk Q1 reproduced by default


def test_unknown_key_with_suggestion():
    message = config_error({**tiny_config("ER"), "softmax_tmp": 0.1})
    assert "softmax_tmp" in message and "did you mean 'softmax_temp'" in message


def test_key_of_another_agent_is_rejected():
    message = config_error({**tiny_config("ER"), "rollout_length": 3})
    assert "rollout_length" in message and "not used by the ER agent" in message


def test_missing_required_key():
    raw = tiny_config("ER")
    del raw["gamma"]
    assert "gamma: missing required key" in config_error(raw)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("num_seeds", 2.5, "expected an integer"),
        ("num_seeds", True, "expected an integer"),
        ("gamma", "0.9", "expected a number"),
        ("use_target", 1, "expected true or false"),
        ("activation", "tanh", "expected one of ['relu', 'silu', 'elu']"),
        ("exploration_strat", "softmx", "did you mean 'softmax'"),
        ("gamma", 1.5, "gamma <= 1"),
        ("alpha_adam", 0.0, "0.0 < alpha_adam"),
        ("batch_size", 0, "1 <= batch_size"),
        ("b2_adam", 1.0, "b2_adam < 1.0"),
        ("environment", "ProcMase", "did you mean 'ProcMaze'"),
        ("matmul_precision", "tf32", "expected one of ['default', 'float32']"),
    ],
)
def test_bad_values(key, value, expected):
    message = config_error({**tiny_config("ER"), key: value})
    assert message.startswith(f"{key}:") and expected in message


def test_incompatible_combinations():
    raw = {**tiny_config("ER"), "exploration_strat": "epsilon_greedy"}
    assert config_error(raw).startswith("epsilon: required when")
    raw = {**tiny_config("ER"), "num_steps": 220}
    assert "multiple of eval_frequency" in config_error(raw)
    raw = tiny_config("ER")
    del raw["softmax_temp"]
    assert config_error(raw).startswith("softmax_temp: required when")


def test_env_config_errors_name_the_key():
    message = config_error({**tiny_config("ER"), "env_config": {"gridsize": 4}})
    assert "gridsize" in message
    message = config_error({**tiny_config("ER"), "env_config": {"grid_size": "4"}})
    assert "grid_size" in message


def test_traced_hyperparameters_are_the_float_keys():
    cfg = config.validate_config(tiny_config("ER"), definition("ER"))
    hp = config.traced_hyperparameters(cfg)
    assert set(hp) == {
        "alpha_adam",
        "b1_adam",
        "b2_adam",
        "eps_adam",
        "wd_adam",
        "softmax_temp",
        "gamma",
    }
    assert all(v.dtype == jnp.float32 and v.shape == () for v in hp.values())


# ------------------------------------------------------------------------------------------
# The README's table of keys is SCHEMA's
# ------------------------------------------------------------------------------------------

TABLE_HEADER = "| key | meaning | default | range | agents | role | may change on resume |"


def readme_default(key: schema.Key) -> str:
    if key.default is schema.REQUIRED:
        return "required"
    if key.default is None:  # required in some configs only, or computed (the doc says which)
        return "—"
    if isinstance(key.default, bool):
        return str(key.default).lower()  # as JSON writes it
    return f"`{key.default!r}`"


def readme_range(name: str, key: schema.Key) -> str:
    if name == "environment":  # checked against the environments, not a choice of the schema
        return " / ".join(f"`{environment}`" for environment in environments.ENVIRONMENTS)
    if key.choices:
        return " / ".join(f"`{choice}`" for choice in key.choices)
    bounds = []
    if key.low is not None:
        bounds.append(f"{'>' if key.low_open else '≥'} {key.low:g}")
    if key.high is not None:
        bounds.append(f"{'<' if key.high_open else '≤'} {key.high:g}")
    return ", ".join(bounds)


def readme_agents(name: str) -> str:
    """ "all", or the agent types that take the key, without their "_model", in registry order."""
    agent_types = {spec.agent_type: spec.definition for spec in AGENTS.values()}
    taking = [t for t, d in agent_types.items() if name in d.keys]
    if taking == list(agent_types):
        return "all"
    return ", ".join(t.removesuffix("_model") for t in taking)


def readme_row(name: str, key: schema.Key) -> str:
    cells = [
        f"`{name}`",
        key.doc.replace("|", "\\|"),  # a bare | would end the cell
        readme_default(key),
        readme_range(name, key),
        readme_agents(name),
        key.role,
        "yes" if key.may_change_on_resume else "",
    ]
    return "| " + " | ".join(cells) + " |"


def test_the_readme_key_table_is_the_schema():
    """Row for row, as `readme_row` writes each key of `SCHEMA` (its failure shows the rows)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().split("\n")
    start = lines.index(TABLE_HEADER)
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    expected = [TABLE_HEADER, "|---" * 7 + "|"]
    expected += [readme_row(name, key) for name, key in schema.SCHEMA.items()]
    assert lines[start:end] == expected


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("softmax_temp", float("nan"), "softmax_temp: expected a finite number (float32), got nan"),
        ("gamma", float("inf"), "gamma: expected a finite number (float32), got inf"),
        ("alpha_adam", -float("inf"), "alpha_adam: expected a finite number (float32), got -inf"),
        ("wd_adam", 1e39, "wd_adam: expected a finite number (float32), got 1e+39"),
        (
            "buffer_size",
            1_000_000_000_000,
            "buffer_size: expected an integer of at most 2147483647 (int32), got 1000000000000",
        ),
        ("num_steps", 2**40, "num_steps: expected an integer of at most 2147483647"),
    ],
)
def test_non_finite_floats_and_unholdable_integers_are_config_errors(key, value, expected):
    assert config_error({**tiny_config("ER"), key: value}).startswith(expected)
