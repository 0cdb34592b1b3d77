"""The training loop of design §9, written once for every agent.

An agent is an `agents.Agent`: a handful of pure functions of one seed saying how it starts, how it
values observations, what it stores and how it updates. The loop steps every seed of a run with
it (`env_step`, vmapped over the seeds in `seeds_step`) for one chunk of `eval_frequency` steps
(`agent_environment_interaction_loop_function`, the reference's name for its main loop), and
scores each seed greedily after the chunk (`evaluate`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import agents
import environments
from agents import Agent
from replay_buffer import BufferState, Transition


class TrainState(NamedTuple):
    """One seed's training state; `vmap` adds a leading seed axis to every leaf."""

    env_state: Any
    obs: jax.Array  # [d] bool: the observation the agent acts on next
    learner: agents.Learner
    buffer: BufferState
    key: jax.Array


class StepReport(NamedTuple):
    """What one seed's environment step tells the rest of the loop."""

    terminal: jax.Array  # [] bool: the episode ended, reset it (`start_new_episode`)
    reset_key: jax.Array
    diagnostics: jax.Array  # [D] float32, in `Agent.diagnostics` order: mean over this step's
    # updates (0: none). One vector rather than D scalars: one add per step in the chunk's sums
    nonfinite: jax.Array  # [] bool: a Q value or a diagnostic was NaN or infinite


class ChunkReport(NamedTuple):
    """What a chunk of `eval_frequency` steps tells the host about one seed."""

    diagnostics: dict[str, jax.Array]  # each []: mean over the chunk's updates (NaN: none)
    nonfinite: jax.Array  # [] bool: some Q value or loss was NaN or infinite in the chunk


def init_seed(agent: Agent, env, key: jax.Array) -> TrainState:
    agent_key, env_key, loop_key = jax.random.split(key, 3)
    learner, buffer = agent.init(agent_key)
    env_state, obs = env.reset(env_key)
    return TrainState(env_state, obs, learner, buffer, loop_key)


def train_learner(agent: Agent, cfg: dict, learner, buffer, t, key, hp):
    """Step 5 of design §9: refresh the target, then `updates_per_step` updates.
    Returns (learner, [D] vector of each diagnostic's mean over the updates)."""
    if cfg["use_target"]:
        learner = jax.lax.cond(
            t % cfg["target_update_frequency"] == 0,
            lambda l: l._replace(q_target=l.q_params),
            lambda l: l,
            learner,
        )
    else:
        # Without a target network the online parameters bootstrap. As in the reference, they
        # are taken once per environment step and kept for all of that step's updates.
        learner = learner._replace(q_target=learner.q_params)

    def one_update(learner, update_key):
        learner, diagnostics = agent.update(learner, buffer, update_key, hp)
        return learner, diagnostics_vector(agent, diagnostics)

    keys = jax.random.split(key, cfg["updates_per_step"])
    learner, diagnostics = jax.lax.scan(one_update, learner, keys)
    return learner, jnp.mean(diagnostics, axis=0)


def diagnostics_vector(agent: Agent, diagnostics: dict[str, jax.Array]) -> jax.Array:
    """An update's diagnostics as one [D] vector in `agent.diagnostics` order."""
    if set(diagnostics) != set(agent.diagnostics):
        raise ValueError(f"update reports {sorted(diagnostics)}, not {agent.diagnostics}")
    values = [jnp.reshape(diagnostics[name], ()) for name in agent.diagnostics]
    return jnp.stack(values) if values else jnp.zeros(0, jnp.float32)


def env_step(agent: Agent, env, cfg: dict, state: TrainState, t, train, hp):
    """One environment step of design §9 for one seed, up to the reset of an ended episode
    (`start_new_episode`). Returns (state, StepReport)."""
    key, value_key, action_key, env_key, reset_key, update_key = jax.random.split(state.key, 6)
    q = agent.q_values(state.learner, state.obs, value_key)
    action = agents.select_action(q, action_key, cfg["exploration_strat"], hp)
    env_state, next_obs, reward, terminal, _ = env.step(env_key, state.env_state, action)
    transition = Transition(state.obs, action, reward, next_obs, terminal)
    buffer = agent.store(state.buffer, state.env_state, transition)
    learner, diagnostics = jax.lax.cond(
        train,
        lambda l: train_learner(agent, cfg, l, buffer, t, update_key, hp),
        lambda l: (l, jnp.zeros(len(agent.diagnostics), jnp.float32)),  # no updates
        state.learner,
    )
    finite = jnp.all(jnp.isfinite(q)) & jnp.all(jnp.isfinite(diagnostics))
    report = StepReport(terminal, reset_key, diagnostics, ~finite)
    return TrainState(env_state, next_obs, learner, buffer, key), report


def start_new_episode(env, cfg: dict, state: TrainState, terminal, reset_key) -> TrainState:
    """Reset one seed's environment if its episode just ended (`terminal`)."""
    reset_state, reset_obs = env.reset(reset_key)
    # Q1: the reference keeps acting on the pre-reset observation after a terminal step.
    obs = jnp.where(terminal & cfg["fresh_obs_on_reset"], reset_obs, state.obs)
    env_state = environments.tree_select(terminal, reset_state, state.env_state)
    return state._replace(env_state=env_state, obs=obs)


def over_pairs(fn: Callable, hp_arg: int | None = None) -> Callable:
    """`fn` of one (grid point, seed) pair -> `fn` of a block with leading axes [G, S].

    The seed axis is vmapped inside, the grid axis outside. Argument `hp_arg` (the traced
    hyperparameters) carries the grid axis only: every seed of a point shares its values.
    """

    def axes(grid: bool, count: int) -> tuple:
        return tuple((0 if grid else None) if i == hp_arg else 0 for i in range(count))

    def vmapped(*args):
        over_seeds = jax.vmap(fn, in_axes=axes(False, len(args)))
        return jax.vmap(over_seeds, in_axes=axes(True, len(args)))(*args)

    return vmapped


def seeds_step(agent: Agent, env, cfg: dict, states: TrainState, t, train, hp):
    """One environment step of every (grid point, seed) pair of a block: `states` has leading
    axes [G, S], `hp` [G]. Returns (states, StepReport [G, S]).

    Resets run only on the steps where some pair's episode ended: written per seed, the reset
    (for ProcMaze, generating a maze) would run for every pair on every step under `vmap`. On
    several devices each runs this on its own block (`compilation.compile_run`), so the test
    is per device and no device waits for another.
    """
    step = over_pairs(lambda s, h: env_step(agent, env, cfg, s, t, train, h), hp_arg=1)
    states, report = step(states, hp)
    reset = over_pairs(lambda s, done, k: start_new_episode(env, cfg, s, done, k))
    states = jax.lax.cond(
        jnp.any(report.terminal),
        reset,
        lambda s, done, k: s,
        states,
        report.terminal,
        report.reset_key,
    )
    return states, report


def agent_environment_interaction_loop_function(
    agent: Agent, env, cfg: dict, states: TrainState, t0, train, hp
):
    """The main loop (the reference's name for it): `eval_frequency` environment steps of every
    (grid point, seed) pair of a block from time `t0`. `states` has leading axes [G, S], `hp`
    [G]. Returns (states, ChunkReport [G, S]).

    Written per pair in `env_step`; the seeds and grid points are vmapped inside each step
    (`seeds_step`) rather than around the whole chunk, so that a step can skip the resets when
    no episode ended.
    """
    # As the reference, a chunk starts from the observation of the environment's state: after
    # a terminal last step of the previous chunk that is the reset state's (quirk Q1 lasts to
    # the end of a chunk, not across chunks).
    observe = over_pairs(env.get_observation)
    states = states._replace(obs=observe(states.env_state))

    def body(carry, t):
        states, sums, nonfinite = carry
        states, report = seeds_step(agent, env, cfg, states, t, train, hp)
        sums = sums + report.diagnostics
        return (states, sums, nonfinite | report.nonfinite), None

    block = states.key.shape[:2]
    sums = jnp.zeros((*block, len(agent.diagnostics)), jnp.float32)
    carry = (states, sums, jnp.zeros(block, jnp.bool_))
    times = t0 + jnp.arange(cfg["eval_frequency"], dtype=jnp.int32)
    states, sums, nonfinite = jax.lax.scan(body, carry, times)[0]
    means = jnp.where(train, sums / cfg["eval_frequency"], jnp.nan)  # NaN: no updates
    named = {name: means[..., i] for i, name in enumerate(agent.diagnostics)}
    return states, ChunkReport(named, nonfinite)


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
