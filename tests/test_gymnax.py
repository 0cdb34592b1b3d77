"""Tests of gymnax_environments.py: under `jit(vmap)` and gymnax's own wrappers
(`FlattenObservationWrapper`, `LogWrapper`), the adapter's trajectories equal the native
environment's for the same keys, a random policy earns the same reward per step, and the
adapter answers gymnax's interface (`make`, spaces, `default_params`, registration).

One jitted rollout per environment (small sizes) serves every test; its time limit is a traced
parameter, so the same compiled code runs without one (the default) and with a short one (which
truncates and resets continuing environments too).
"""

import functools

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import environment, spaces
from gymnax.wrappers.purerl import FlattenObservationWrapper, LogWrapper

import environments
import gymnax_environments
from gymnax_environments import EnvParams, make_gymnax

# Small sizes for the paper's environments; any other environment runs at its defaults.
SMALL = {
    "ProcMaze": {"grid_size": 3},
    "ButtonGrid": {"grid_size": 3, "num_buttons": 2},
    "PanFlute": {"num_pipes": 3},
    "OpenGrid": {"grid_size": 3},
}
NUM_ENVS, NUM_STEPS = 16, 40
TIME_LIMITS = (gymnax_environments.NO_TIME_LIMIT, 6)


def random_action(key, num_actions):
    return jax.random.randint(jax.random.fold_in(key, 7), (), 0, num_actions)


@functools.cache
def rollouts(name):
    """Jitted `(reset keys [N], step keys [N, T], time limit) -> (through gymnax's wrappers,
    native)`: the trajectories of a random policy (its action drawn from each step's key)."""
    env, _ = make_gymnax(name, SMALL.get(name, {}))
    wrapped = LogWrapper(FlattenObservationWrapper(env))
    native = env.env
    num_actions = native.num_actions()

    def gymnax_run(reset_key, step_keys, limit):
        params = EnvParams(max_steps_in_episode=limit)
        obs, state = wrapped.reset(reset_key, params)

        def body(state, key):
            action = random_action(key, num_actions)
            obs, state, reward, terminated, truncated, info = wrapped.step(
                key, state, action, params
            )
            out = (obs, state.env_state.env_state, reward, terminated, truncated)
            return state, (*out, info["returned_episode_returns"], info["returned_episode"])

        return obs, jax.lax.scan(body, state, step_keys)[1]

    def native_run(reset_key, step_keys, limit):
        """gymnax's auto-reset spelled out on the native environment: the step key is the first
        half of the key, a finished episode restarts from the second half."""
        env_state, obs = native.reset(reset_key)

        def body(carry, key):
            env_state, time = carry
            key_step, key_reset = jax.random.split(key)
            action = random_action(key, num_actions)
            env_state, obs, reward, terminal, _ = native.step(key_step, env_state, action)
            truncated = time + 1 >= limit
            reset_state, reset_obs = native.reset(key_reset)
            done = terminal | truncated
            env_state = environments.tree_select(done, reset_state, env_state)
            obs = jnp.where(done, reset_obs, obs)
            time = jnp.where(done, 0, time + 1)
            return (env_state, time), (obs, env_state, reward, terminal, truncated)

        return obs, jax.lax.scan(body, (env_state, jnp.int32(0)), step_keys)[1]

    def both(reset_keys, step_keys, limit):
        """Both rollouts, vmapped over environments, compiled as one program."""
        return tuple(
            jax.vmap(run, in_axes=(0, 0, None))(reset_keys, step_keys, limit)
            for run in (gymnax_run, native_run)
        )

    return jax.jit(both)


def run_keys(seed):
    reset_key, step_key = jax.random.split(jax.random.PRNGKey(seed))
    step_keys = jax.random.split(step_key, NUM_ENVS * NUM_STEPS)
    return jax.random.split(reset_key, NUM_ENVS), step_keys.reshape(NUM_ENVS, NUM_STEPS, -1)


@pytest.mark.parametrize("limit", TIME_LIMITS, ids=["no_time_limit", "time_limit"])
@pytest.mark.parametrize("name", list(environments.ENVIRONMENTS))
def test_trajectories_equal_the_native_environments(name, limit):
    gymnax_out, native_out = rollouts(name)(*run_keys(seed=limit % 97), limit)
    first_obs, (obs, states, rewards, terminated, truncated, returns, returned) = gymnax_out
    native_first_obs, native = native_out
    np.testing.assert_array_equal(first_obs, native_first_obs)
    for got, expected in zip((obs, states, rewards, terminated, truncated), native, strict=True):
        jax.tree.map(np.testing.assert_array_equal, got, expected)
    # A random policy earns the same reward per step.
    assert float(jnp.mean(rewards)) == float(jnp.mean(native[2]))
    # LogWrapper's episode returns are the native rewards summed over each finished episode.
    done = np.asarray(terminated | truncated)
    assert np.array_equal(np.asarray(returned), done)
    native_rewards = np.asarray(native[2])
    for i in range(NUM_ENVS):
        ends = np.flatnonzero(done[i])
        starts = np.concatenate([[0], ends + 1])[: len(ends)]
        sums = [native_rewards[i, s : e + 1].sum() for s, e in zip(starts, ends, strict=True)]
        np.testing.assert_allclose(np.asarray(returns)[i, ends], sums, rtol=1e-6)
    if limit < NUM_STEPS:
        assert truncated.any()
    if not environments.ENVIRONMENTS[name].episodic:
        assert not terminated.any()
    if limit == gymnax_environments.NO_TIME_LIMIT:
        assert not truncated.any()


def test_random_policies_differ_between_keys():
    """The rollouts are not constant: another seed gives other rewards (so equality above is
    not that of two empty trajectories)."""
    a = rollouts("ProcMaze")(*run_keys(seed=1), 6)[0][1]
    b = rollouts("ProcMaze")(*run_keys(seed=2), 6)[0][1]
    assert not np.array_equal(a[0], b[0])
    assert np.asarray(a[5]).any()  # some episode finished and was logged


@pytest.mark.parametrize("name", list(environments.ENVIRONMENTS))
def test_gymnax_interface(name):
    env, params = make_gymnax(name, SMALL.get(name, {}))
    native = environments.make_environment(name, SMALL.get(name, {}))
    assert isinstance(env, environment.Environment) and params == env.default_params
    assert env.name == name and env.num_actions == native.num_actions()
    assert params.max_steps_in_episode == gymnax_environments.NO_TIME_LIMIT
    actions = env.action_space(params)
    assert isinstance(actions, spaces.Discrete) and actions.n == native.num_actions()
    observations = FlattenObservationWrapper(env).observation_space(params)
    assert isinstance(observations, spaces.Box)
    assert tuple(observations.shape) == (native.observation_size,)
    assert observations.dtype == jnp.bool_
    obs, _ = jax.eval_shape(env.reset, jax.random.PRNGKey(0), params)
    assert obs.shape == (native.observation_size,) and obs.dtype == jnp.bool_


def test_make_gymnax_errors_are_the_environments():
    with pytest.raises(ValueError, match="did you mean 'ProcMaze'"):
        make_gymnax("ProcMze")
    with pytest.raises(ValueError, match="'grid_size'"):
        make_gymnax("OpenGrid", {"grid_size": 1})


def test_register_with_gymnax():
    names = gymnax_environments.register_with_gymnax()
    assert names == [name + "-mbg" for name in environments.ENVIRONMENTS]
    assert gymnax_environments.register_with_gymnax() == names  # again: a no-op
    env, params = gymnax.make("PanFlute-mbg", num_pipes=3)
    assert isinstance(env, gymnax_environments.GymnaxEnvironment)
    assert env.env.num_pipes == 3 and params == env.default_params
