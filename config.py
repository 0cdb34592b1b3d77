"""Config keys, their defaults and checks (SPEC sections 2 and 12): one table, `SCHEMA`.

A config file is validated once, before anything is compiled: a bad key or value raises
`ConfigError`, whose message is one line naming the key and what was expected. The result is a
plain dict, never mutated afterwards. Keys marked `traced` enter the compiled loop as values
(`traced_hyperparameters`), so changing them never recompiles.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

import agents
import environments

REQUIRED = object()  # default of a key that the config file must give
# Counts, sizes and times are int32 inside the compiled loop (buffer positions, the step counter),
# and float hyperparameters float32: a value beyond these cannot be held.
INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
ALL = frozenset({"ER", "perfect_model", "simple_model", "latent_model"})
MODEL = frozenset({"simple_model", "latent_model"})
ROLLOUT = frozenset({"perfect_model", "simple_model", "latent_model"})
ONE_OPTIMISER = frozenset({"ER", "perfect_model"})
LATENT = frozenset({"latent_model"})


class Key(NamedTuple):
    """One config key: its type, default, allowed values, which agents read it, and whether it
    enters the compiled loop as a traced value (it then never triggers a recompilation)."""

    type: type
    default: Any
    doc: str
    agents: frozenset = ALL
    low: float | None = None  # inclusive lower bound
    high: float | None = None  # inclusive upper bound
    low_open: bool = False  # lower bound is exclusive
    high_open: bool = False  # upper bound is exclusive
    choices: tuple = ()
    traced: bool = False


def _positive(doc, agents=ALL, **kw):
    return Key(int, REQUIRED, doc, agents, low=1, **kw)


def _step_size(doc, agents):
    return Key(float, REQUIRED, doc, agents, low=0.0, low_open=True, traced=True)


def _weight(doc, agents=MODEL, default=REQUIRED):
    return Key(float, default, doc, agents, low=0.0, traced=True)


SCHEMA: dict[str, Key] = {
    # networks and optimiser
    "num_hidden_layers": _positive("hidden layers of every MLP"),
    "num_hidden_units": _positive("units per hidden layer"),
    "activation": Key(str, REQUIRED, "hidden activation", choices=("relu", "silu", "elu")),
    "alpha_adam": _step_size("Adam step size (ER, perfect model)", ONE_OPTIMISER),
    "Q_alpha": _step_size("Adam step size of the Q network", MODEL),
    "model_alpha": _step_size("Adam step size of the model networks", MODEL),
    "b1_adam": Key(float, REQUIRED, "Adam beta1", low=0.0, high=1.0, high_open=True, traced=True),
    "b2_adam": Key(float, REQUIRED, "Adam beta2", low=0.0, high=1.0, high_open=True, traced=True),
    "eps_adam": Key(float, REQUIRED, "Adam epsilon", low=0.0, traced=True),
    "wd_adam": Key(
        float, REQUIRED, "weight decay, not scaled by the step size", low=0.0, traced=True
    ),
    # acting
    "exploration_strat": Key(
        str, REQUIRED, "exploration policy", choices=agents.EXPLORATION_STRATEGIES
    ),
    "softmax_temp": Key(
        float,
        None,
        "softmax temperature (required with softmax)",
        low=0.0,
        low_open=True,
        traced=True,
    ),
    "epsilon": Key(
        float,
        None,
        "exploration rate (required with epsilon_greedy)",
        low=0.0,
        high=1.0,
        traced=True,
    ),
    # Q-learning
    "gamma": Key(float, REQUIRED, "discount", low=0.0, high=1.0, traced=True),
    "double_DQN": Key(bool, False, "double-DQN target"),
    "use_target": Key(bool, REQUIRED, "use a target network"),
    "target_update_frequency": _positive("environment steps between target refreshes"),
    "batch_size": _positive("transitions (ER) or rollout starts (others) per update"),
    "updates_per_step": Key(int, 1, "updates per environment step", low=1),
    "buffer_size": _positive("replay buffer capacity per seed"),
    "rollout_length": _positive("steps of each rollout", ROLLOUT),
    # the run
    "num_seeds": _positive("seeds trained at once (vmapped)"),
    "num_steps": _positive("environment steps per seed (a multiple of eval_frequency)"),
    "training_start_time": Key(int, REQUIRED, "steps before updates start", low=0),
    "eval_frequency": _positive("steps per chunk; evaluation after each chunk"),
    "eval_steps": _positive("steps of each greedy evaluation episode"),
    "eval_batch_size": _positive("evaluation environments per seed"),
    "save_params": Key(bool, True, "write <output>.params"),
    "save_frequency": _positive("steps between parameter saves"),
    "checkpoint_frequency": Key(
        int, None, "steps between checkpoints (default: a tenth of num_steps)", low=1
    ),
    # environment
    "environment": Key(str, REQUIRED, "environment name", choices=tuple(environments.ENVIRONMENTS)),
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
    # switches for the reference's quirks (SPEC §12); defaults reproduce the reference
    "fresh_obs_on_reset": Key(bool, False, "Q1: act on the reset observation after a terminal"),
    "sample_obs_from_sigmoid": Key(
        bool, False, "Q2: sample next-obs bits with sigmoid(logit)", frozenset({"simple_model"})
    ),
    "reconstruct_terminal_obs": Key(
        bool, False, "Q6: reconstruct obs on terminal transitions", LATENT
    ),
    "fixed_continuation_if_continuing": Key(
        bool, False, "Q7: c = 1 in rollouts when episodic_env is false", MODEL
    ),
}


class ConfigError(ValueError):
    """A bad config: the message is one line naming the key and what was expected."""


def _type_name(t: type) -> str:
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        dict: "an object",
    }[t]


def _check_type(name: str, value: Any, key: Key) -> Any:
    ok = isinstance(value, key.type) and not (key.type is int and isinstance(value, bool))
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise ConfigError(f"{name}: expected {_type_name(key.type)}, got {json.dumps(value)}")
    # JSON as Python reads it allows NaN and Infinity, and integers of any size.
    if key.type is float and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        raise ConfigError(f"{name}: expected a finite number (float32), got {value}")
    if key.type is int and abs(value) > INT32_MAX:
        raise ConfigError(
            f"{name}: expected an integer of at most {INT32_MAX} (int32), got {value}"
        )
    return value


def _check_range(label: str, name: str, value: Any, key: Key) -> None:
    """`label` names the value in the message: the key, or one element of a grid axis."""
    if key.choices and value not in key.choices:
        close = difflib.get_close_matches(str(value), key.choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{label}: expected one of {list(key.choices)}, got {value!r}{hint}")
    too_low = key.low is not None and (value <= key.low if key.low_open else value < key.low)
    too_high = key.high is not None and (value >= key.high if key.high_open else value > key.high)
    if too_low or too_high:
        low = "" if key.low is None else f"{key.low} {'<' if key.low_open else '<='} "
        high = "" if key.high is None else f" {'<' if key.high_open else '<='} {key.high}"
        raise ConfigError(f"{label}: expected {low}{name}{high}, got {value}")


def _check_combinations(cfg: dict) -> None:
    def need(key: str, when: str) -> None:
        if cfg.get(key) is None:
            raise ConfigError(f"{key}: required when {when}")

    if cfg["exploration_strat"] == "softmax":
        need("softmax_temp", 'exploration_strat is "softmax"')
    if cfg["exploration_strat"] == "epsilon_greedy":
        need("epsilon", 'exploration_strat is "epsilon_greedy"')
    if cfg["num_steps"] % cfg["eval_frequency"]:
        raise ConfigError(
            f"num_steps: expected a multiple of eval_frequency ({cfg['eval_frequency']}), "
            f"got {cfg['num_steps']}"
        )
    if cfg.get("latent_type") == "categorical":
        need("feature_width", 'latent_type is "categorical"')
    if cfg.get("seperate_rollout_batch_size"):
        need("rollout_batch_size", "seperate_rollout_batch_size is true")
    if cfg.get("learn_obs_variance") and cfg.get("binary_obs"):
        raise ConfigError("learn_obs_variance: only meaningful with binary_obs false")


def _check_value(label: str, name: str, value: Any, key: Key) -> Any:
    value = _check_type(label, value, key)
    _check_range(label, name, value, key)
    return value


def _grid_axis(name: str, values: list, key: Key) -> list:
    """A list given for a key: an axis of a grid of runs, each element checked on its own."""
    if not key.traced:
        raise ConfigError(
            f"{name}: cannot be a grid axis (a list): it changes shapes or the compiled program;"
            " only traced keys (step sizes, softmax_temp, epsilon, gamma, Adam constants, loss"
            " weights) can"
        )
    if not values:
        raise ConfigError(f"{name}: an empty list (a grid axis needs at least one value)")
    checked = [_check_value(f"{name}[{i}]", name, v, key) for i, v in enumerate(values)]
    for i, value in enumerate(checked):
        if value in checked[:i]:
            raise ConfigError(f"{name}[{i}]: {value} is already on this grid axis")
    return checked


def validate_config(raw: Any, agent_type: str) -> dict:
    """Defaults filled in, types and ranges checked; raises `ConfigError` on the first problem.

    A traced key may hold a list: an axis of a grid of runs (`grid_points`)."""
    if not isinstance(raw, dict):
        raise ConfigError("the config file must hold a JSON object")
    accepted = {name for name, key in SCHEMA.items() if agent_type in key.agents}
    for name in raw:
        if name not in accepted:
            close = difflib.get_close_matches(name, accepted, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
            elif name in SCHEMA:
                hint = f" (not used by the {agent_type} agent)"
            else:
                hint = ""
            raise ConfigError(f"{name}: unknown key{hint}")
    cfg = {}
    for name in sorted(accepted):
        key = SCHEMA[name]
        if name not in raw:
            if key.default is REQUIRED:
                raise ConfigError(f"{name}: missing required key ({key.doc})")
            cfg[name] = key.default
            continue
        value = raw[name]
        if value is None and key.default is None:
            cfg[name] = None
        elif isinstance(value, list):
            cfg[name] = _grid_axis(name, value, key)
        else:
            cfg[name] = _check_value(name, name, value, key)
    _check_combinations(cfg)
    try:
        environments.make_environment(cfg["environment"], cfg["env_config"])
    except ValueError as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    return cfg


def load_config(path: str, agent_type: str) -> dict:
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path!r}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config: {path!r} is not valid JSON ({error})") from None
    return validate_config(raw, agent_type)


def traced_hyperparameters(cfg: dict) -> agents.HParams:
    """The keys that enter the compiled loop as values, as float32 scalars (`cfg` is one point
    of a grid, or a config without lists)."""
    return {
        name: jnp.float32(cfg[name])
        for name, key in SCHEMA.items()
        if key.traced and cfg.get(name) is not None
    }


# --------------------------------------------------------------------------------------------
# Grids: lists of traced values, trained in one compiled run
# --------------------------------------------------------------------------------------------


def grid_axes(cfg: dict) -> dict[str, list]:
    """The keys given as lists and their values, in key order."""
    return {name: value for name, value in sorted(cfg.items()) if isinstance(value, list)}


def grid_points(cfg: dict) -> list[dict]:
    """One config of scalars per point of the Cartesian product of the grid axes (the first
    axis in key order varies slowest); `[cfg]` for a config without lists."""
    axes = grid_axes(cfg)
    return [
        dict(cfg, **dict(zip(axes, values, strict=True)))
        for values in itertools.product(*axes.values())
    ]


def grid_hyperparameters(points: list[dict]) -> agents.HParams:
    """`traced_hyperparameters` of every point, stacked: each leaf [G] float32."""
    per_point = [traced_hyperparameters(point) for point in points]
    return {name: jnp.stack([hp[name] for hp in per_point]) for name in per_point[0]}


def point_name(point: dict, axes) -> str:
    """How a grid point's output files are told apart: `alpha_adam=5e-05_softmax_temp=0.1`."""
    return "_".join(f"{name}={point[name]!r}" for name in axes)
