"""A training run end to end (`experiment.run`): determinism, parameter saves, and ER learning."""

import numpy as np
from helpers import final_and_random_scores, tiny_config, train_in_process

import train_ER_DQN
from training import experiment


def train_er(raw, tmp_path, seed=0, output="run"):
    return train_in_process("ER", train_ER_DQN.build_agent, raw, tmp_path, seed, output)


def test_same_seed_identical_different_seed_differs(tmp_path):
    raw = tiny_config("ER")
    a, _ = train_er(raw, tmp_path, seed=0, output="a")
    b, _ = train_er(raw, tmp_path, seed=0, output="b")
    c, _ = train_er(raw, tmp_path, seed=1, output="c")
    rates = [np.stack(r["metrics"]["reward_rates"]) for r in (a, b, c)]
    np.testing.assert_array_equal(rates[0], rates[1])
    assert not np.array_equal(rates[0], rates[2])
    assert not np.array_equal(rates[0][:, 0], rates[0][:, 1])  # seed-axis entries differ too


def test_params_saved_on_schedule(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(experiment, "save_params", lambda *a: calls.append(a[0]))
    raw = tiny_config("ER", num_steps=400, save_frequency=100)
    train_er(raw, tmp_path)
    # before chunks starting at 100, 200, 300 (100 steps accumulated each time), and at the end
    assert len(calls) == 4


# ------------------------------------------------------------------------------------------
# ER learns
# ------------------------------------------------------------------------------------------


def test_er_beats_a_random_policy(tmp_path):
    raw = tiny_config(
        "ER",
        num_hidden_units=64,
        num_steps=3000,
        eval_frequency=500,
        training_start_time=500,
        buffer_size=3000,
        target_update_frequency=100,
        eval_steps=20,
        eval_batch_size=16,
        save_params=False,
        environment="OpenGrid",  # a fixed goal: learnable in a few thousand steps
        env_config={"grid_size": 4},
    )
    final, random_score = final_and_random_scores("ER", train_ER_DQN.build_agent, raw, tmp_path)
    assert final > random_score + 3.0, (final, random_score)
