"""Every config key in one table, `SCHEMA` (design §2 and §12): its type, default, allowed
values, the family of agents that read it, and its role in a run.

A key belongs to one family (`FAMILIES`: every agent, the agents with one optimiser, those that
roll out, the learned models, ...); an agent's definition (`training/definition.py`) names the
families it belongs to, so this table names no agent and a new agent is one new module.

A key's role says where its value is read, and so what may vary without a new program:
- `SHAPE`: shapes, sizes, counts and switches baked into the compiled program;
- `TRACED`: a value the compiled loop reads as an argument (step sizes, temperature, gamma, loss
  weights): a grid may list several values of it, and changing it never recompiles;
- `HOST`: read only by the Python loop around the program (run length, when to train, save and
  checkpoint), never by a compiled function.
`may_change_on_resume` marks the keys a resumed run may change (the run's length, how often it
checkpoints). The sets the code needs are derived from the table at the bottom of this module.

This module imports no jax: the tools that read `.out` files use it to tell a grid's axes from
the rest of a config.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

REQUIRED = object()  # default of a key that the config file must give
# Counts, sizes and times are int32 inside the compiled loop (buffer positions, the step counter),
# and float hyperparameters float32: a value beyond these cannot be held.
INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
# The families of keys: the agents' definitions say which they read (`keys_of`).
ALL = "every agent"
ONE_OPTIMISER = "one optimiser"  # Q alone is trained: one step size
ROLLOUT = "rollouts"  # Q is trained on rollouts from replayed starts
MODEL = "learned model"  # a model trained beside Q: two step sizes, the model's loss weights
OBSERVATION_MODEL = "observation model"  # the model predicts observations themselves
LATENT = "latent model"  # the model predicts in a learned latent space
FAMILIES = (ALL, ONE_OPTIMISER, ROLLOUT, MODEL, OBSERVATION_MODEL, LATENT)

SHAPE, TRACED, HOST = "shape", "traced", "host"
CHECKPOINTS_PER_RUN = 10  # checkpoint_frequency's default: a tenth of the run


class Key(NamedTuple):
    """One config key: its type, default, allowed values, the family that reads it, its role."""

    type: type
    default: Any
    doc: str
    family: str = ALL
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    low_open: bool = False  # lower bound is exclusive
    high_open: bool = False  # upper bound is exclusive
    choices: tuple = ()
    role: str = SHAPE
    may_change_on_resume: bool = False

    @property
    def traced(self) -> bool:
        return self.role == TRACED


def _positive(doc, family=ALL, **kw):
    return Key(int, REQUIRED, doc, family, low=1, **kw)


def _step_size(doc, family):
    return Key(float, REQUIRED, doc, family, low=0.0, low_open=True, role=TRACED)


def _weight(doc, family=MODEL, default=REQUIRED):
    return Key(float, default, doc, family, low=0.0, role=TRACED)


SCHEMA: dict[str, Key] = {
    # networks and optimiser
    # Bounded: tracing grows with the depth (100 000 layers traced for minutes); the paper has 2.
    "num_hidden_layers": _positive("hidden layers of every MLP", high=100),
    "num_hidden_units": _positive("units per hidden layer"),
    "activation": Key(str, REQUIRED, "hidden activation", choices=("relu", "silu", "elu")),
    "alpha_adam": _step_size("Adam step size of Q (one optimiser)", ONE_OPTIMISER),
    "Q_alpha": _step_size("Adam step size of the Q network", MODEL),
    "model_alpha": _step_size("Adam step size of the model networks", MODEL),
    "b1_adam": Key(float, REQUIRED, "Adam beta1", low=0.0, high=1.0, high_open=True, role=TRACED),
    "b2_adam": Key(float, REQUIRED, "Adam beta2", low=0.0, high=1.0, high_open=True, role=TRACED),
    "eps_adam": Key(float, REQUIRED, "Adam epsilon", low=0.0, role=TRACED),
    "wd_adam": Key(
        float, REQUIRED, "weight decay, not scaled by the step size", low=0.0, role=TRACED
    ),
    # acting
    "exploration_strat": Key(
        str, REQUIRED, "exploration policy", choices=("softmax", "epsilon_greedy")
    ),
    "softmax_temp": Key(
        float,
        None,
        "softmax temperature (required with softmax)",
        low=0.0,
        low_open=True,
        role=TRACED,
    ),
    "epsilon": Key(
        float,
        None,
        "exploration rate (required with epsilon_greedy)",
        low=0.0,
        high=1.0,
        role=TRACED,
    ),
    # Q-learning
    "gamma": Key(float, REQUIRED, "discount", low=0.0, high=1.0, role=TRACED),
    "double_DQN": Key(bool, False, "double-DQN target"),
    "use_target": Key(bool, REQUIRED, "use a target network"),
    "target_update_frequency": _positive("environment steps between target refreshes"),
    "batch_size": _positive("replayed transitions, or rollout starts, per update"),
    "updates_per_step": Key(int, 1, "updates per environment step", low=1),
    "buffer_size": _positive("replay buffer capacity per seed"),
    "rollout_length": _positive("steps of each rollout", ROLLOUT),
    # the run
    "num_seeds": _positive("seeds trained at once (vmapped)"),
    "num_steps": _positive(
        "environment steps per seed (a multiple of eval_frequency)",
        role=HOST,
        may_change_on_resume=True,
    ),
    "training_start_time": Key(int, REQUIRED, "steps before updates start", low=0, role=HOST),
    "eval_frequency": _positive("steps per chunk; evaluation after each chunk"),
    "eval_steps": _positive("steps of each greedy evaluation episode"),
    "eval_batch_size": _positive("evaluation environments per seed"),
    "save_params": Key(bool, True, "write <output>.params", role=HOST),
    "save_frequency": _positive("steps between parameter saves", role=HOST),
    "checkpoint_frequency": Key(
        int,
        None,
        f"steps between checkpoints (default: num_steps / {CHECKPOINTS_PER_RUN})",
        low=1,
        role=HOST,
        may_change_on_resume=True,
    ),
    # environment (its name is checked against `environments.ENVIRONMENTS` by the validation)
    "environment": Key(str, REQUIRED, "environment name"),
    "env_config": Key(dict, {}, "environment constructor arguments"),
    "episodic_env": Key(bool, False, "episodic (ProcMaze) or continuing (ButtonGrid, PanFlute)"),
    # learned models
    "reward_weight": _weight("weight of the reward loss"),
    "termination_weight": _weight("weight of the termination loss"),
    "obs_prediction_weight": _weight("weight of the observation loss"),
    "binary_obs": Key(bool, REQUIRED, "Bernoulli (true) or Gaussian (false) observations", MODEL),
    "KL_prior_weight": _weight("weight of KL(sg(posterior) || prior)", LATENT),
    "KL_posterior_weight": _weight("weight of KL(posterior || sg(prior))", LATENT),
    "posterior_entropy_weight": _weight("weight of KL(posterior || base)", LATENT),
    "latent_type": Key(
        str,
        REQUIRED,
        "latent distribution",
        LATENT,
        choices=("gaussian", "tanh_gaussian", "categorical"),
    ),
    "num_features": _positive("latent features F", LATENT),
    "feature_width": Key(
        int, None, "categories per feature W (required when categorical)", LATENT, low=1
    ),
    "min_std": Key(float, 0.0, "added to the encoder's std", LATENT, low=0.0),
    "std_act": Key(
        str, "softplus", "std activation", LATENT, choices=("softplus", "sigmoid", "sigmoid2")
    ),
    "learn_obs_variance": Key(bool, False, "learn the decoder's std (binary_obs false)", LATENT),
    "seperate_rollout_batch_size": Key(bool, False, "rollouts start from a second batch", LATENT),
    "rollout_batch_size": Key(
        int, None, "size of that batch (required when seperate)", LATENT, low=1
    ),
    # how float32 matrix products are computed (README, "Matmul precision"); the reference sets
    # none, so JAX's default: float32 on CPUs and V100s, TF32 on A100/H100-class GPUs
    "matmul_precision": Key(
        str,
        "default",
        "float32 matrix products: JAX's default or true float32",
        choices=("default", "float32"),
    ),
    # switches for the reference's quirks (design §12); defaults reproduce the reference
    "fresh_obs_on_reset": Key(bool, False, "Q1: act on the reset observation after a terminal"),
    "sample_obs_from_sigmoid": Key(
        bool, False, "Q2: sample next-obs bits with sigmoid(logit)", OBSERVATION_MODEL
    ),
    "reconstruct_terminal_obs": Key(
        bool, False, "Q6: reconstruct obs on terminal transitions", LATENT
    ),
    "fixed_continuation_if_continuing": Key(
        bool, False, "Q7: c = 1 in rollouts when episodic_env is false", MODEL
    ),
}

# Keys the run adds to the resolved config (they are flags, not config-file keys), and their role.
RUN_KEYS = {"agent_type": SHAPE, "seed": HOST}

TRACED_KEYS = frozenset(name for name, key in SCHEMA.items() if key.role == TRACED)
HOST_ONLY_KEYS = frozenset(
    [name for name, key in SCHEMA.items() if key.role == HOST]
    + [name for name, role in RUN_KEYS.items() if role == HOST]
)
MAY_CHANGE_ON_RESUME = frozenset(name for name, key in SCHEMA.items() if key.may_change_on_resume)


def keys_of(families: tuple[str, ...]) -> frozenset[str]:
    """The keys an agent of these families reads (every agent's keys included)."""
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown key families {sorted(unknown)}: expected some of {FAMILIES}")
    return frozenset(name for name, key in SCHEMA.items() if key.family in {ALL, *families})


def checkpoint_every(cfg: dict) -> int:
    """Environment steps between checkpoints: `checkpoint_frequency`, by default a tenth of
    the run. They are written at chunk boundaries, so at most one per chunk."""
    return cfg["checkpoint_frequency"] or max(1, cfg["num_steps"] // CHECKPOINTS_PER_RUN)


def is_number(value) -> bool:
    """Ints and floats (numpy's too); not bools, which are switches."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def setting(cfg: dict, name: str):
    """A key's value in a config this project wrote: a key missing from it (written before the
    key existed) reads as its default, the setting that run had."""
    key = SCHEMA.get(name)
    if name in cfg or key is None or key.default is REQUIRED:
        return cfg.get(name)
    return key.default


def same_value(a, b) -> bool:
    """Two config values are the same setting: numbers by value (1 and 1.0 are one setting, 1
    and true are not), lists and objects element by element, anything else by type and
    equality. The one rule of the checkpoints, the Figure 4 driver and the sweep summary."""
    if is_number(a) and is_number(b):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):  # e.g. numpy arrays: no single truth value
        return False
