"""The perfect-model agent: its state buffer and its rollouts in the true environment (its CLI
run and learning run: `test_cli.py`, `test_run.py`, over the registry)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import agents
import environments
import train_perfect_model_DQN as pm

ENVIRONMENTS = {
    "ProcMaze": environments.ProcMaze(grid_size=3),
    "ButtonGrid": environments.ButtonGrid(grid_size=3, num_buttons=2),
    "PanFlute": environments.PanFlute(num_pipes=3),
    "OpenGrid": environments.OpenGrid(grid_size=3),
}


def random_walk_states(env, key, num_states: int):
    """`num_states` consecutive states of a uniformly random walk from a reset (stacked)."""
    reset_key, key = jax.random.split(key)
    state, _ = env.reset(reset_key)

    def step(state, key):
        action_key, env_key = jax.random.split(key)
        action = jax.random.randint(action_key, (), 0, env.num_actions())
        return env.step(env_key, state, action)[0], state

    return jax.lax.scan(step, state, jax.random.split(key, num_states))[1]


def tree_row(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def trees_equal(a, b) -> bool:
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return all(
        x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True)
    )


# --------------------------------------------------------------------------------------------
# The state buffer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_states_restored_from_the_buffer_equal_the_states_added(name):
    env = ENVIRONMENTS[name]
    capacity, num_added = 4, 7  # wraps around: the last 4 added states remain
    states = pm.state_buffer(env, capacity)

    @jax.jit
    def fill_and_sample(key):
        walk_key, sample_key = jax.random.split(key)
        added = random_walk_states(env, walk_key, num_added)
        buffer = jax.lax.fori_loop(
            0, num_added, lambda i, b: states.add(b, tree_row(added, i)), states.init()
        )
        return added, buffer, states.sample(buffer, sample_key, 64)

    added, buffer, sampled = jax.device_get(fill_and_sample(jax.random.PRNGKey(1)))
    # Grid positions are kept as int8; booleans are packed. Neither changes what comes back.
    for stored in jax.tree.leaves(buffer.storage):
        assert stored.dtype in (np.int8, np.uint8)
    remaining = [tree_row(added, i) for i in range(num_added - capacity, num_added)]
    matched = set()
    for i in range(64):
        row = tree_row(sampled, i)
        hits = [j for j, state in enumerate(remaining) if trees_equal(row, state)]
        assert hits, f"sample {i} is not one of the stored states"
        matched.update(hits)
    assert matched == set(range(capacity))
    assert jax.tree.structure(sampled) == jax.tree.structure(added)


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------


class CounterState(NamedTuple):
    count: jax.Array  # [] int32, steps taken
    terminal_at: jax.Array  # [] int32, the step whose transition is terminal


class CounterEnv:
    """A hand-made environment whose transition number `terminal_at` is terminal (and only
    that one: it never resets, as in a rollout)."""

    def get_observation(self, state):
        return jax.nn.one_hot(state.count, 16) > 0

    def step(self, key, state, action):
        terminal = state.count == state.terminal_at
        state = state._replace(count=state.count + 1)
        reward = -jnp.float32(1.0) - action  # also records which action was taken
        return state, self.get_observation(state), reward, terminal, {}


def uniform_act(obs, key):
    return jax.random.randint(key, (), 0, 5)


counter_rollout = jax.jit(
    lambda state, key: pm.rollout(CounterEnv(), uniform_act, state, key, length=6)
)


@pytest.mark.parametrize("k", [0, 2, 5, 10])
def test_weights_drop_to_zero_after_the_first_terminal_transition(k):
    start = CounterState(jnp.int32(0), jnp.int32(k))
    batch = counter_rollout(start, jax.random.PRNGKey(0))
    steps = np.arange(6)
    np.testing.assert_array_equal(batch.weight, (steps <= k).astype(np.float32))
    np.testing.assert_array_equal(batch.continuation, (steps != k).astype(np.float32))
    # no reset inside a rollout: the counter keeps running through the terminal step
    np.testing.assert_array_equal(np.argmax(batch.obs, axis=-1), steps)
    np.testing.assert_array_equal(np.argmax(batch.next_obs, axis=-1), steps + 1)


def test_a_rollout_starting_on_the_goal_keeps_only_its_terminal_transition():
    env = ENVIRONMENTS["ProcMaze"]
    state, _ = jax.jit(env.reset)(jax.random.PRNGKey(3))
    state = state._replace(player=state.goal)  # terminal on the first transition
    batch = jax.jit(lambda s, k: pm.rollout(env, uniform_act, s, k, length=4))(
        state, jax.random.PRNGKey(0)
    )
    np.testing.assert_array_equal(batch.weight, [1.0, 0.0, 0.0, 0.0])
    assert batch.continuation[0] == 0.0
    np.testing.assert_array_equal(batch.reward, -np.ones(4))


@pytest.mark.parametrize("name", ["ProcMaze", "ButtonGrid"])
def test_a_rollout_from_a_stored_state_replays_the_environment(name):
    env = ENVIRONMENTS[name]
    length = 8
    q_net = agents.q_network(env.num_actions(), agents.MLPConfig(1, 16, "elu"))
    q_params = q_net.init(jax.random.PRNGKey(0), jnp.zeros(env.observation_size))
    hp = {"softmax_temp": jnp.float32(0.5)}

    @jax.jit
    def act(obs, key):
        return agents.select_action(q_net.apply(q_params, obs), key, "softmax", hp)

    states = pm.state_buffer(env, 2)

    @jax.jit
    def store_and_restore(key):
        walk_key, sample_key = jax.random.split(key)
        original = tree_row(random_walk_states(env, walk_key, 6), 5)
        buffer = states.add(states.init(), original)
        return original, tree_row(states.sample(buffer, sample_key, 1), 0)

    original, restored = store_and_restore(jax.random.PRNGKey(5))
    key = jax.random.PRNGKey(7)
    batch = jax.jit(lambda s, k: pm.rollout(env, act, s, k, length))(restored, key)

    # The same steps taken by hand from the original state, with the documented keys.
    step = jax.jit(env.step)
    state, obs = original, env.get_observation(original)
    for i, step_key in enumerate(jax.random.split(key, length)):
        action_key, env_key = jax.random.split(step_key)
        action = act(obs, action_key)
        state, next_obs, reward, terminal, _ = step(env_key, state, action)
        assert batch.action[i] == action
        np.testing.assert_array_equal(batch.obs[i], obs)
        np.testing.assert_array_equal(batch.next_obs[i], next_obs)
        assert batch.reward[i] == reward
        assert batch.continuation[i] == 1.0 - float(terminal)
        obs = next_obs
    assert len(set(np.asarray(batch.action).tolist())) > 1  # the policy explored
