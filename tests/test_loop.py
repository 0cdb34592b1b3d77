"""The training loop (`training/loop.py`): the train flag, seeds, the target network, and the
reference's behaviours at the start of a chunk and after a terminal step (quirk Q1)."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import definition, tiny_config

import agents
import environments
import train_ER_DQN
from training import config, loop


def test_train_flag_off_leaves_parameters_alone(er_run):
    _, _, cfg, run = er_run
    hp = config.grid_hyperparameters([cfg])
    state = run.init(jax.random.split(jax.random.PRNGKey(1), cfg["num_seeds"]))
    before = jax.tree_util.tree_map(np.asarray, state.learner.q_params)
    state, _ = run.chunk(state, jnp.int32(0), jnp.bool_(False), hp)
    after_idle = state.learner.q_params
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after_idle)
    assert int(state.buffer.size[0, 0]) == cfg["eval_frequency"]
    state, _ = run.chunk(state, jnp.int32(50), jnp.bool_(True), hp)
    changed = jax.tree_util.tree_map(
        lambda a, b: not np.array_equal(a, b), before, state.learner.q_params
    )
    assert all(jax.tree_util.tree_leaves(changed))


def test_seed_axis_entries_differ(er_run):
    _, _, cfg, run = er_run
    state = run.init(jax.random.split(jax.random.PRNGKey(0), cfg["num_seeds"]))
    w = np.asarray(state.learner.q_params["q_function/linear"]["w"])[0]  # grid point 0
    assert not np.allclose(w[0], w[1]) and not np.allclose(w[1], w[2])
    walls = np.asarray(state.env_state.walls)[0]
    assert len({walls[i].tobytes() for i in range(3)}) >= 2


def test_target_refreshed_every_target_update_frequency(er_run):
    agent, env, cfg, _ = er_run
    hp = config.traced_hyperparameters(cfg)
    state = loop.init_seed(agent, env, jax.random.PRNGKey(0))
    step = jax.jit(lambda s, t, train: loop.env_step(agent, env, cfg, s, t, train, hp)[0])
    for _ in range(40):  # fill the buffer a little
        state = step(state, jnp.int32(1), False)
    state = step(state, jnp.int32(1), True)  # t % 50 != 0: target stays at the initial parameters
    target = state.learner.q_target["q_function/linear"]["w"]
    online = state.learner.q_params["q_function/linear"]["w"]
    assert not np.array_equal(target, online)
    before_refresh = online
    state = step(state, jnp.int32(50), True)  # refresh, then update: target = pre-update online
    np.testing.assert_array_equal(state.learner.q_target["q_function/linear"]["w"], before_refresh)


def test_stale_observation_after_terminal_is_quirk_q1():
    raw = tiny_config("ER", env_config={"grid_size": 2})
    for fresh in (False, True):
        cfg = config.validate_config({**raw, "fresh_obs_on_reset": fresh}, definition("ER"))
        env = environments.make_environment(cfg["environment"], cfg["env_config"])
        agent = train_ER_DQN.build_agent(cfg, env)
        hp = config.traced_hyperparameters(cfg)
        state = loop.init_seed(agent, env, jax.random.PRNGKey(3))
        step = jax.jit(  # one pair, with its grid and seed axes added and removed
            lambda s, a=agent, e=env, c=cfg, h=hp: jax.tree.map(
                lambda x: x[0, 0],
                loop.seeds_step(
                    a,
                    e,
                    c,
                    jax.tree.map(lambda x: x[None, None], s),
                    0,
                    False,
                    jax.tree.map(lambda x: x[None], h),
                ),
            )
        )
        seen_terminal = False
        for _ in range(60):
            new, _ = step(state)
            buffer_index = int(new.buffer.position) - 1
            terminal = bool(new.buffer.storage.terminal[buffer_index])
            if terminal:
                seen_terminal = True
                stored_next = np.unpackbits(np.asarray(new.buffer.storage.next_obs[buffer_index]))
                reset_obs = np.asarray(env.get_observation(new.env_state))
                next_obs = stored_next[: reset_obs.size].astype(bool)
                acting_obs = np.asarray(new.obs)
                if fresh:
                    np.testing.assert_array_equal(acting_obs, reset_obs)
                else:
                    np.testing.assert_array_equal(acting_obs, next_obs)
            state = new
        assert seen_terminal


# ------------------------------------------------------------------------------------------
# Two behaviours of the reference's loop
# ------------------------------------------------------------------------------------------


def test_a_chunk_acts_first_on_the_observation_of_the_environment_state(er_run):
    """The reference recomputes the observation from the environment's state at the start of
    every chunk: after a terminal last step the next chunk acts on the reset state's
    observation, not the stale one of quirk Q1."""
    _, env, cfg, run = er_run
    hp = config.grid_hyperparameters([cfg])
    state = run.init(jax.random.split(jax.random.PRNGKey(6), cfg["num_seeds"]))
    expected = np.asarray(jax.vmap(jax.vmap(env.get_observation))(state.env_state))
    stale = state._replace(obs=jnp.zeros_like(state.obs))  # not the environment's observation
    state, _ = run.chunk(stale, jnp.int32(0), jnp.bool_(False), hp)
    first = np.unpackbits(np.asarray(state.buffer.storage.obs[:, :, 0]), axis=-1)
    np.testing.assert_array_equal(first[..., : expected.shape[-1]], expected)


def test_without_a_target_network_bootstrap_parameters_are_set_once_per_step():
    """With use_target false and several updates per step, the reference sets the bootstrap
    parameters once per environment step and keeps them for all of that step's updates."""

    def update(learner, buffer, key, hp):  # each update adds 1 and reports its bootstrap
        return learner._replace(q_params=learner.q_params + 1.0), {"target": learner.q_target}

    agent = agents.Agent(None, None, None, update, None, diagnostics=("target",))
    learner = agents.Learner(q_params=jnp.float32(10.0), q_target=jnp.float32(-5.0), q_opt=None)
    cfg = {"use_target": False, "updates_per_step": 3}
    learner, diagnostics = loop.train_learner(agent, cfg, learner, None, 0, jax.random.key(0), {})
    assert float(learner.q_params) == 13.0
    # all three updates bootstrapped from the step's starting parameters (mean of 10, 10, 10),
    # not from the parameters of the update before (10, 11, 12)
    assert diagnostics.tolist() == [10.0]
