"""A training run end to end (`experiment.run`): determinism, parameter saves, and every agent of
the registry learning to beat a random policy."""

from typing import NamedTuple

import numpy as np
import pytest
from helpers import final_and_random_scores, tiny_config, train_in_process

from agent_registry import AGENTS
from training import experiment


def test_same_seed_identical_different_seed_differs(tmp_path):
    raw = tiny_config("ER")
    a, _ = train_in_process("ER", raw, tmp_path, seed=0, output="a")
    b, _ = train_in_process("ER", raw, tmp_path, seed=0, output="b")
    c, _ = train_in_process("ER", raw, tmp_path, seed=1, output="c")
    rates = [np.stack(r["metrics"]["reward_rates"]) for r in (a, b, c)]
    np.testing.assert_array_equal(rates[0], rates[1])
    assert not np.array_equal(rates[0], rates[2])
    assert not np.array_equal(rates[0][:, 0], rates[0][:, 1])  # seed-axis entries differ too


def test_params_saved_on_schedule(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiment, "save_params", lambda *a: calls.append(a[0]))
    raw = tiny_config("ER", num_steps=400, save_frequency=100)
    train_in_process("ER", raw, tmp_path)
    # before chunks starting at 100, 200, 300 (100 steps accumulated each time), and at the end
    assert len(calls) == 4


# ------------------------------------------------------------------------------------------
# Every agent learns
# ------------------------------------------------------------------------------------------


class Learning(NamedTuple):
    """A short run on OpenGrid (a fixed goal: learnable in a few thousand steps) and how far
    its last evaluations must beat a uniformly random policy."""

    overrides: dict  # on the agent's tiny config
    last: int  # evaluations averaged
    margin: float  # reward per evaluation episode above the random policy's


LATENT = Learning(
    {"num_hidden_units": 32, "num_steps": 2000, "eval_frequency": 250, "eval_batch_size": 32},
    last=2,
    margin=2.0,
)
# On the 3 x 3 grid a random walk needs about 10 steps to the goal, the greedy policy about 3.
LEARNING = {
    "ER": Learning(
        {
            "num_hidden_units": 64,
            "num_steps": 3000,
            "eval_frequency": 500,
            "target_update_frequency": 100,
            "eval_batch_size": 16,
            "env_config": {"grid_size": 4},
        },
        last=1,
        margin=3.0,
    ),
    "perfect_model": Learning(
        {"num_hidden_units": 32, "num_steps": 2000, "eval_frequency": 500, "eval_batch_size": 16},
        last=2,
        margin=4.0,
    ),
    "simple_model": Learning(
        {
            "num_hidden_units": 32,
            "model_alpha": 3e-3,
            "num_steps": 4000,
            "eval_frequency": 500,
            "eval_batch_size": 16,
        },
        last=2,
        margin=4.0,
    ),
    "categorical_latent": LATENT,
    "gaussian_latent": LATENT,
}


def test_every_registered_agent_has_a_learning_run():
    assert list(LEARNING) == list(AGENTS)


@pytest.mark.parametrize("name", list(AGENTS))
def test_beats_a_random_policy(name, tmp_path):
    overrides, last, margin = LEARNING[name]
    raw = tiny_config(
        name,
        environment="OpenGrid",
        save_params=False,
        training_start_time=overrides["eval_frequency"],  # after the first evaluation
        buffer_size=overrides["num_steps"],  # every transition is kept
        **overrides,
    )
    final, random_score = final_and_random_scores(name, raw, tmp_path, last)
    assert final > random_score + margin, (final, random_score)
