"""The run machinery every training script shares (SPEC sections 1, 2, 9-11).

config file -> validated config -> per-seed state -> chunked, jitted, vmapped loop -> greedy
evaluation after each chunk -> `<output>.out` (and `<output>.params`) written atomically.

An agent is an `Agent`: a handful of pure functions of one seed saying how it starts, how it
values observations, what it stores and how it updates. Everything else lives here, once.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import json
import math
import os
import pickle
import sys
import tempfile
import time
import types
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import agents
import environments


def _default_xla_flag(flag: str, value) -> None:
    """Add `flag=value` to XLA_FLAGS unless the user set that flag. XLA reads its flags when
    its backend starts, at the first computation; importing these modules computes nothing."""
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}={value}".strip()


# XLA's CPU backend hands both matrix products and element-wise fusions to YNNPACK by default.
# For the small batched MLPs here the element-wise fusions are slower than XLA's own loops
# (update time at 8 seeds: simple model -25%, Gaussian latent -25%, categorical latent -8%,
# ER and perfect model unchanged; README "Performance").
_default_xla_flag("--xla_cpu_experimental_ynn_fusion_type", "dot")
# One CPU device per core. The seed axis is sharded across them (`seed_sharding`), so each core
# runs its own seeds' updates: one seed's matrix products (batch 32 in a rollout step) are too
# small for XLA to split across cores, and seeds are independent. Results agree with a
# single device up to float rounding (tested).
CPU_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_default_xla_flag("--xla_force_host_platform_device_count", CPU_CORES or 1)

# --------------------------------------------------------------------------------------------
# Configuration: one table of every key (SPEC §2 and §12)
# --------------------------------------------------------------------------------------------

REQUIRED = object()  # default of a key that the config file must give
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
    return value


def _check_range(name: str, value: Any, key: Key) -> None:
    if key.choices and value not in key.choices:
        close = difflib.get_close_matches(str(value), key.choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name}: expected one of {list(key.choices)}, got {value!r}{hint}")
    too_low = key.low is not None and (value <= key.low if key.low_open else value < key.low)
    too_high = key.high is not None and (value >= key.high if key.high_open else value > key.high)
    if too_low or too_high:
        low = "" if key.low is None else f"{key.low} {'<' if key.low_open else '<='} "
        high = "" if key.high is None else f" {'<' if key.high_open else '<='} {key.high}"
        raise ConfigError(f"{name}: expected {low}{name}{high}, got {value}")


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


def validate_config(raw: Any, agent_type: str) -> dict:
    """Defaults filled in, types and ranges checked; raises `ConfigError` on the first problem."""
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
            continue
        value = _check_type(name, value, key)
        _check_range(name, value, key)
        cfg[name] = value
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
    """The keys that enter the compiled loop as values, as float32 scalars."""
    return {
        name: jnp.float32(cfg[name])
        for name, key in SCHEMA.items()
        if key.traced and cfg.get(name) is not None
    }


# --------------------------------------------------------------------------------------------
# What an agent is to the runner
# --------------------------------------------------------------------------------------------


class Agent(NamedTuple):
    """An agent's own ideas as pure functions of one seed (the runner adds the seed axis)."""

    # key -> (Learner, BufferState): initial parameters, optimiser states and an empty buffer
    init: Callable[[jax.Array], tuple[agents.Learner, agents.BufferState]]
    # (learner, obs [d], key) -> action values [A]; the latent agent encodes obs with a sample
    q_values: Callable[[agents.Learner, jax.Array, jax.Array], jax.Array]
    # (buffer, env state before the step, transition) -> buffer
    store: Callable[[agents.BufferState, Any, agents.Transition], agents.BufferState]
    # (learner, buffer, key, hp) -> learner: one update of SPEC §8
    update: Callable[[agents.Learner, agents.BufferState, jax.Array, agents.HParams], Any]
    # learner -> {'Q': params, 'model': params}: what `<output>.params` keeps
    saved_params: Callable[[agents.Learner], dict]


def store_transition(replay: agents.ReplayBuffer):
    """`Agent.store` of the agents that replay real transitions (ER, simple, latent)."""
    return lambda buffer, env_state, transition: replay.add(buffer, transition)


def saved_q_params(learner: agents.Learner) -> dict:
    return {"Q": learner.q_params}


def saved_q_and_model_params(learner: agents.Learner) -> dict:
    return {"Q": learner.q_params, "model": learner.model_params}


class TrainState(NamedTuple):
    """One seed's training state; `vmap` adds a leading seed axis to every leaf."""

    env_state: Any
    obs: jax.Array  # [d] bool: the observation the agent acts on next
    learner: agents.Learner
    buffer: agents.BufferState
    key: jax.Array


# --------------------------------------------------------------------------------------------
# The loop of SPEC §9, written for one seed (resets batched over seeds, see `seeds_step`)
# --------------------------------------------------------------------------------------------


def init_seed(agent: Agent, env, key: jax.Array) -> TrainState:
    agent_key, env_key, loop_key = jax.random.split(key, 3)
    learner, buffer = agent.init(agent_key)
    env_state, obs = env.reset(env_key)
    return TrainState(env_state, obs, learner, buffer, loop_key)


def train_learner(agent: Agent, cfg: dict, learner, buffer, t, key, hp) -> agents.Learner:
    """Step 5 of SPEC §9: refresh the target, then `updates_per_step` updates."""
    if cfg["use_target"]:
        learner = jax.lax.cond(
            t % cfg["target_update_frequency"] == 0,
            lambda l: l._replace(q_target=l.q_params),
            lambda l: l,
            learner,
        )

    def one_update(learner, update_key):
        if not cfg["use_target"]:  # without a target network the online parameters are the target
            learner = learner._replace(q_target=learner.q_params)
        return agent.update(learner, buffer, update_key, hp), None

    keys = jax.random.split(key, cfg["updates_per_step"])
    return jax.lax.scan(one_update, learner, keys)[0]


def env_step(agent: Agent, env, cfg: dict, state: TrainState, t, train, hp):
    """One environment step of SPEC §9 for one seed, up to the reset of an ended episode
    (`start_new_episode`). Returns (state, reward, terminal, reset key)."""
    key, value_key, action_key, env_key, reset_key, update_key = jax.random.split(state.key, 6)
    q = agent.q_values(state.learner, state.obs, value_key)
    action = agents.select_action(q, action_key, cfg["exploration_strat"], hp)
    env_state, next_obs, reward, terminal, _ = env.step(env_key, state.env_state, action)
    transition = agents.Transition(state.obs, action, reward, next_obs, terminal)
    buffer = agent.store(state.buffer, state.env_state, transition)
    learner = jax.lax.cond(
        train,
        lambda l: train_learner(agent, cfg, l, buffer, t, update_key, hp),
        lambda l: l,
        state.learner,
    )
    return TrainState(env_state, next_obs, learner, buffer, key), reward, terminal, reset_key


def start_new_episode(env, cfg: dict, state: TrainState, terminal, reset_key) -> TrainState:
    """Reset one seed's environment if its episode just ended (`terminal`)."""
    reset_state, reset_obs = env.reset(reset_key)
    # Q1: the reference keeps acting on the pre-reset observation after a terminal step.
    obs = jnp.where(terminal & cfg["fresh_obs_on_reset"], reset_obs, state.obs)
    env_state = environments.tree_select(terminal, reset_state, state.env_state)
    return state._replace(env_state=env_state, obs=obs)


def seeds_step(agent: Agent, env, cfg: dict, states: TrainState, t, train, hp):
    """One environment step of every seed (leading axis of `states`). Returns (states, rewards).

    Resets run only on the steps where some seed's episode ended: written per seed, the reset
    (for ProcMaze, generating a maze) would run for every seed on every step under `vmap`.
    """
    step = jax.vmap(lambda s: env_step(agent, env, cfg, s, t, train, hp))
    states, rewards, terminal, reset_keys = step(states)
    reset = jax.vmap(lambda s, done, k: start_new_episode(env, cfg, s, done, k))
    states = jax.lax.cond(
        jnp.any(terminal), reset, lambda s, done, k: s, states, terminal, reset_keys
    )
    return states, rewards


def run_chunk(agent: Agent, env, cfg: dict, states: TrainState, t0, train, hp):
    """`eval_frequency` environment steps of every seed from time `t0`.
    Returns (states, summed reward per seed)."""

    def body(states, t):
        return seeds_step(agent, env, cfg, states, t, train, hp)

    times = t0 + jnp.arange(cfg["eval_frequency"], dtype=jnp.int32)
    states, rewards = jax.lax.scan(body, states, times)
    return states, rewards.sum(axis=0)


def evaluate(agent: Agent, env, cfg: dict, learner, key, hp):
    """Greedy score of one seed, averaged over `eval_batch_size` fresh environments.

    Episodic: the sum of rewards up to and including the first terminal step. Continuing: the
    average reward per step.
    """

    def one_env(key):
        reset_key, key = jax.random.split(key)
        env_state, obs = env.reset(reset_key)

        def body(carry, key):
            env_state, obs, score, done = carry
            value_key, env_key = jax.random.split(key)
            action = jnp.argmax(agent.q_values(learner, obs, value_key))
            env_state, obs, reward, terminal, _ = env.step(env_key, env_state, action)
            score = score + jnp.where(done, 0.0, reward)
            return (env_state, obs, score, done | terminal), None

        carry = (env_state, obs, jnp.float32(0.0), jnp.bool_(False))
        keys = jax.random.split(key, cfg["eval_steps"])
        score = jax.lax.scan(body, carry, keys)[0][2]
        return score if cfg["episodic_env"] else score / cfg["eval_steps"]

    return jnp.mean(jax.vmap(one_env)(jax.random.split(key, cfg["eval_batch_size"])))


def seed_sharding(num_seeds: int, devices=None) -> NamedSharding:
    """The seed axis split evenly over as many devices as divide `num_seeds` (at most all of
    `devices`, by default the backend's: one per core on CPU, the GPUs on a GPU machine)."""
    devices = jax.devices() if devices is None else list(devices)
    count = max(n for n in range(1, min(len(devices), num_seeds) + 1) if num_seeds % n == 0)
    return NamedSharding(Mesh(np.array(devices[:count]), ("seeds",)), PartitionSpec("seeds"))


class CompiledRun(NamedTuple):
    """The three jitted functions of a run, each compiled once, all over the seed axis."""

    init: Callable  # keys [S] -> TrainState
    chunk: Callable  # (TrainState, t0, train, hp) -> (TrainState, rewards [S]); donates state
    evaluate: Callable  # (learner, keys [S], hp) -> scores [S]


def compile_run(
    agent: Agent, env, cfg: dict, devices=None, program_dir: str | None = None
) -> CompiledRun:
    """Seeds are independent, so each device runs its share of them (`seed_sharding`); the only
    exchange between devices is whether any seed's episode ended this step (`seeds_step`).

    With `program_dir`, each function's traced and lowered program is kept there
    (`SavedProgramJit`), so a second launch of the same config skips tracing and lowering.
    """

    def chunk(states, t0, train, hp):
        return run_chunk(agent, env, cfg, states, t0, train, hp)

    def score(learner, key, hp):
        return evaluate(agent, env, cfg, learner, key, hp)

    seeds = seed_sharding(cfg["num_seeds"], devices)
    shared = NamedSharding(seeds.mesh, PartitionSpec())  # t0, train and hp: the same for all
    functions = {
        "init": (
            jax.vmap(lambda key: init_seed(agent, env, key)),
            dict(in_shardings=seeds, out_shardings=seeds),
        ),
        # The states are donated so the buffers are updated in place, not copied every chunk.
        "chunk": (
            chunk,
            dict(
                in_shardings=(seeds, shared, shared, shared),
                out_shardings=seeds,
                donate_argnums=0,
            ),
        ),
        "evaluate": (
            jax.vmap(score, in_axes=(0, 0, None)),
            dict(in_shardings=(seeds, seeds, shared), out_shardings=seeds),
        ),
    }
    if program_dir is None:
        return CompiledRun(**{name: jax.jit(fn, **kw) for name, (fn, kw) in functions.items()})
    run_key = program_key(cfg, seeds)
    return CompiledRun(
        **{
            name: SavedProgramJit(fn, kw, os.path.join(program_dir, f"{name}-{run_key}"))
            for name, (fn, kw) in functions.items()
        }
    )


# --------------------------------------------------------------------------------------------
# Saved programs: a second launch of the same config skips tracing and lowering
# --------------------------------------------------------------------------------------------

_SOURCE_DIR = os.path.dirname(os.path.abspath(__file__))


# Keys read only by the Python loop of `train`, never inside a compiled function.
HOST_ONLY_KEYS = frozenset(
    {"seed", "num_steps", "training_start_time", "save_params", "save_frequency"}
)


def program_key(cfg: dict, sharding: NamedSharding) -> str:
    """What the compiled functions depend on: the config less `HOST_ONLY_KEYS` and the traced
    hyperparameters (arguments of the programs, so a grid over them shares one), this project's
    source files, the JAX version, XLA's flags and the devices."""
    digest = hashlib.sha256()
    run_cfg = {
        k: v
        for k, v in cfg.items()
        if k not in HOST_ONLY_KEYS and not (k in SCHEMA and SCHEMA[k].traced)
    }
    digest.update(json.dumps(run_cfg, sort_keys=True, default=str).encode())
    for name in sorted(os.listdir(_SOURCE_DIR)):
        if name.endswith(".py"):
            with open(os.path.join(_SOURCE_DIR, name), "rb") as f:
                digest.update(name.encode() + f.read())
    devices = [f"{d.platform}:{d.device_kind}" for d in sharding.mesh.devices.flat]
    digest.update(f"{jax.__version__} {devices} {os.environ.get('XLA_FLAGS', '')}".encode())
    return digest.hexdigest()[:24]


def _register_saved_pytrees() -> None:
    """Name the pytree types that cross the compiled functions' boundary, so that `jax.export`
    can save their structure."""
    import optax

    types = [
        TrainState,
        agents.Learner,
        agents.BufferState,
        agents.Transition,
        optax.ScaleByAdamState,
        optax.EmptyState,
        *environments.STATE_TYPES,
    ]
    for cls in types:
        name = f"model_generalization.{cls.__module__}.{cls.__qualname__}"
        with contextlib.suppress(ValueError):  # already registered (a module imported twice)
            jax.export.register_namedtuple_serialization(cls, serialized_name=name)


class SavedProgramJit:
    """`jax.jit(fn, **jit_kwargs)` whose traced and lowered program (StableHLO, through
    `jax.export`) is saved beside `path_prefix` at its first call, and loaded instead of
    tracing `fn` on a later launch. Tracing and lowering an agent is most of the start-up once
    XLA's persistent cache holds the compiled code. One program per input signature."""

    def __init__(self, fn: Callable, jit_kwargs: dict, path_prefix: str):
        self.fn, self.jit_kwargs, self.path_prefix = fn, jit_kwargs, path_prefix
        self.jitted: dict[str, Callable] = {}

    def _jitted_for(self, args) -> Callable:
        leaves, tree = jax.tree.flatten(args)
        signature = str(tree) + str([(jnp.shape(x), jnp.result_type(x)) for x in leaves])
        if signature not in self.jitted:
            digest = hashlib.sha256(signature.encode()).hexdigest()[:16]
            exported = self._load_or_export(f"{self.path_prefix}-{digest}.jaxexport", args)
            self.jitted[signature] = jax.jit(exported.call, **self.jit_kwargs)
        return self.jitted[signature]

    def _load_or_export(self, path: str, args):
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    return jax.export.deserialize(bytearray(f.read()))
            except Exception as error:  # unreadable: trace anew and replace it
                print(f"{path}: not loaded ({error}); tracing anew", file=sys.stderr)
        exported = jax.export.export(jax.jit(self.fn, **self.jit_kwargs))(*args)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, lambda f: f.write(exported.serialize()))
        return exported

    def __call__(self, *args):
        return self._jitted_for(args)(*args)

    def lower(self, *args):
        return self._jitted_for(args).lower(*args)

    def _cache_size(self) -> int:
        return sum(f._cache_size() for f in self.jitted.values())


_register_saved_pytrees()


# --------------------------------------------------------------------------------------------
# Outputs (SPEC §10-11)
# --------------------------------------------------------------------------------------------


# The process's umask: reading it means setting it, so it is set back at once.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """`write(file)` into a temporary file beside `path`, then rename: a reader (or a killed
    run) only ever sees the old file or the complete new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        # The permissions of an ordinary new file, not mkstemp's 0600.
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_pickle_atomic(path: str, obj: Any) -> None:
    write_atomic(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def per_seed_numpy(tree: Any, num_seeds: int) -> list:
    """A tree with a leading seed axis -> a list of per-seed trees of numpy arrays."""
    host = jax.device_get(tree)
    return [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), host) for i in range(num_seeds)]


def save_params(path: str, agent: Agent, learner, num_seeds: int) -> None:
    saved = agent.saved_params(learner)  # field selection: the seed axis stays in front
    write_pickle_atomic(path, {name: per_seed_numpy(p, num_seeds) for name, p in saved.items()})


def out_record(cfg: dict, reward_rates: list, eval_times: list) -> dict:
    return {
        "config": types.SimpleNamespace(**cfg),
        "metrics": {"reward_rates": list(reward_rates), "eval_times": list(eval_times)},
    }


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def parse_args(agent_type: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=f"Train the {agent_type} agent.")
    parser.add_argument("--seed", "-s", type=int, default=0, help="master PRNG seed")
    parser.add_argument("--config", "-c", required=True, help="path to a JSON config")
    parser.add_argument("--output", "-o", default=agent_type, help="output prefix")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or logs")
    return parser.parse_args(argv)


def enable_compilation_cache() -> str | None:
    """JAX's persistent compilation cache, on by default: a second launch of the same config
    skips XLA compilation. `JAX_COMPILATION_CACHE_DIR` moves it; an empty value turns it off.
    Returns the directory for saved programs (`SavedProgramJit`) inside it, or None."""
    directory = os.environ.get(
        "JAX_COMPILATION_CACHE_DIR",
        os.path.join(os.path.expanduser("~"), ".cache", "model_generalization_jax"),
    )
    if directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
        return os.path.join(directory, "programs")
    return None


def train(
    agent: Agent,
    env,
    cfg: dict,
    seed: int,
    output: str,
    quiet: bool = False,
    program_dir: str | None = None,
) -> dict:
    """The whole run; returns the `.out` record it wrote last. `program_dir`: see
    `compile_run`."""
    from tqdm import tqdm

    num_seeds, chunk_steps = cfg["num_seeds"], cfg["eval_frequency"]
    num_chunks = cfg["num_steps"] // chunk_steps
    run = compile_run(agent, env, cfg, program_dir=program_dir)
    hp = traced_hyperparameters(cfg)
    init_key, eval_key = jax.random.split(jax.random.PRNGKey(seed))
    state = run.init(jax.random.split(init_key, num_seeds))

    reward_rates, eval_times = [], []
    record = out_record(cfg, reward_rates, eval_times)
    steps_since_save = 0
    bar = tqdm(range(num_chunks), disable=quiet, unit="chunk", dynamic_ncols=True)
    for i in bar:
        t0 = i * chunk_steps
        if cfg["save_params"] and steps_since_save >= cfg["save_frequency"]:
            save_params(f"{output}.params", agent, state.learner, num_seeds)
            steps_since_save = 0
        train_now = t0 >= cfg["training_start_time"]
        state, _ = run.chunk(state, jnp.int32(t0), jnp.bool_(train_now), hp)
        keys = jax.random.split(jax.random.fold_in(eval_key, i), num_seeds)
        scores = np.asarray(run.evaluate(state.learner, keys, hp), dtype=np.float32)
        reward_rates.append(scores)
        eval_times.append(t0)
        steps_since_save += chunk_steps
        record = out_record(cfg, reward_rates, eval_times)
        write_pickle_atomic(f"{output}.out", record)  # Q8: every evaluation, not only at the end
        bar.set_postfix(time=t0 + chunk_steps, mean_return=f"{scores.mean():.3f}")
        if not quiet:
            bar.write(f"t={t0 + chunk_steps} returns: " + " ".join(f"{s:.3f}" for s in scores))
    if cfg["save_params"]:
        save_params(f"{output}.params", agent, state.learner, num_seeds)
    return record


def main(agent_type: str, build_agent: Callable[[dict, Any], Agent], argv=None) -> dict:
    """Entry point of every `train_*.py`: parse flags, validate the config before anything is
    compiled (exit status 2 with one line on a bad config), then train."""
    args = parse_args(agent_type, argv)
    try:
        cfg = load_config(args.config, agent_type)
    except ConfigError as error:
        print(f"{args.config}: config error: {error}", file=sys.stderr)
        sys.exit(2)
    cfg = {**cfg, "agent_type": agent_type, "seed": args.seed}
    program_dir = enable_compilation_cache()
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    start = time.time()
    agent = build_agent(cfg, env)
    record = train(agent, env, cfg, args.seed, args.output, args.quiet, program_dir)
    if not args.quiet:
        steps = cfg["num_steps"] * cfg["num_seeds"]
        elapsed = time.time() - start
        print(
            f"done: {steps} env steps in {elapsed:.1f} s ({steps / elapsed:.0f} steps/s, "
            f"all seeds, compilation included)",
            file=sys.stderr,
        )
    return record


def observation_size(env) -> int:
    """Length of the flat observation vector of `env`."""
    obs = jax.eval_shape(lambda: env.reset(jax.random.PRNGKey(0))[1])
    return math.prod(obs.shape)
