"""A config validated against `schema.SCHEMA` (design §2 and §12), and grids of it.

A config file is validated once, before anything is compiled: a bad key or value raises
`ConfigError`, whose message is one line naming the key and what was expected. The result is a
plain dict, never mutated afterwards. Traced keys enter the compiled loop as values
(`traced_hyperparameters`), so changing them never recompiles; a traced key given as a list is
an axis of a grid of runs trained as one program (`grid_points`).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

import environments
from agents import HParams
from training.schema import FLOAT32_MAX, INT32_MAX, REQUIRED, SCHEMA, Key


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
    seen = set()  # not a scan of the values before each: a long axis stays linear
    for i, value in enumerate(checked):
        if value in seen:
            raise ConfigError(f"{name}[{i}]: {value} is already on this grid axis")
        seen.add(value)
    return checked


def validate_config(raw: Any, agent) -> dict:
    """Defaults filled in, types and ranges checked for the agent whose definition is `agent`
    (its `agent_type` and the `keys` it accepts: `training/definition.py`); raises `ConfigError`
    on the first problem.

    A traced key may hold a list: an axis of a grid of runs (`grid_points`)."""
    if not isinstance(raw, dict):
        raise ConfigError("the config file must hold a JSON object")
    agent_type, accepted = agent.agent_type, agent.keys
    for name in raw:
        if name not in accepted:
            close = difflib.get_close_matches(str(name), accepted, n=1)
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
    known = SCHEMA["environment"]._replace(choices=tuple(environments.ENVIRONMENTS))
    _check_range("environment", "environment", cfg["environment"], known)
    _check_environment(cfg["environment"], cfg["env_config"])
    return cfg


def _check_environment(name: str, env_config: dict) -> None:
    """The environment's arguments as the environment checks them, and sizes it can hold: each
    number an int32, and an observation of at most `INT32_MAX` entries (beyond, nothing that
    indexes it works, and building it took minutes before failing)."""
    for key, value in env_config.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT32_MAX:
            raise ConfigError(
                f"env_config: {key!r} for {name}: expected an integer of at most {INT32_MAX} "
                f"(int32), got {value}"
            )
    try:
        env = environments.make_environment(name, env_config)
    except ValueError as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    size = env.observation_size
    if size > INT32_MAX:
        given = ", ".join(f"{k} {v}" for k, v in env_config.items())
        raise ConfigError(
            f"env_config: {given} gives {name} observations of {size} entries, more than "
            f"{INT32_MAX} (int32)"
        )


def warnings(cfg: dict) -> list[str]:
    """Lines for a config that is valid but cannot do what it seems to say."""
    lines = []
    if cfg["training_start_time"] >= cfg["num_steps"]:
        lines.append(
            f"warning: training_start_time {cfg['training_start_time']} >= num_steps "
            f"{cfg['num_steps']}: no update will ever run"
        )
    if cfg["buffer_size"] < cfg["batch_size"]:
        lines.append(
            f"warning: buffer_size {cfg['buffer_size']} < batch_size {cfg['batch_size']}: every "
            "batch draws the same items several times"
        )
    return lines


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object whose keys are all different: Python's JSON keeps the last of two equal
    keys without a word, so a config saying `alpha_adam` twice would silently run one."""
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ConfigError(f"{key}: given twice in one object; give it once")
        seen.add(key)
    return dict(pairs)


def load_config(path: str, agent) -> dict:
    """`validate_config` of a JSON file (`agent`: an agent's definition): UTF-8 JSON holding
    one object, each key once."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        raw = json.loads(text, object_pairs_hook=_unique_keys)
    except ConfigError:
        raise
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"--config: {path!r} is not UTF-8 text (byte {error.start}: {error.reason})"
        ) from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"--config: {path!r} is not valid JSON ({error})") from None
    except RecursionError:
        raise ConfigError(f"--config: {path!r} is nested too deeply to be a config") from None
    except ValueError as error:  # an integer of thousands of digits, which Python refuses
        raise ConfigError(f"--config: {path!r}: {str(error).splitlines()[0]}") from None
    return validate_config(raw, agent)


def traced_hyperparameters(cfg: dict) -> HParams:
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


def grid_size(cfg: dict) -> int:
    """How many points the grid has (1 without lists), before any is built."""
    return math.prod(len(values) for values in grid_axes(cfg).values())


def grid_points(cfg: dict) -> list[dict]:
    """One config of scalars per point of the Cartesian product of the grid axes (the first
    axis in key order varies slowest); `[cfg]` for a config without lists."""
    axes = grid_axes(cfg)
    return [
        dict(cfg, **dict(zip(axes, values, strict=True)))
        for values in itertools.product(*axes.values())
    ]


def grid_hyperparameters(points: list[dict]) -> HParams:
    """`traced_hyperparameters` of every point, stacked: each leaf [G] float32."""
    # One array per key from numpy, not one jax scalar per point and key: a large grid's
    # hyperparameters are built in milliseconds, not minutes. The same float32 values.
    names = [name for name, key in SCHEMA.items() if key.traced and points[0].get(name) is not None]
    return {
        name: jnp.asarray(np.array([point[name] for point in points], np.float32)) for name in names
    }
