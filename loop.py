"""The training loop of SPEC section 9, written once for every agent.

An agent is an `Agent`: a handful of pure functions of one seed saying how it starts, how it
values observations, what it stores and how it updates. The loop steps every seed of a run with
it (`env_step`, vmapped over the seeds in `seeds_step`) for one chunk of `eval_frequency` steps
(`agent_environment_interaction_loop_function`, the reference's name for its main loop), and
scores each seed greedily after the chunk (`evaluate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import agents
import environments


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


def agent_environment_interaction_loop_function(agent: Agent, env, cfg: dict, states: TrainState, t0, train, hp):
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


def observation_size(env) -> int:
    """Length of the flat observation vector of `env`."""
    obs = jax.eval_shape(lambda: env.reset(jax.random.PRNGKey(0))[1])
    return math.prod(obs.shape)
