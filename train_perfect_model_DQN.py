"""DQN trained only on rollouts of the true simulator from replayed states (design §8, perfect
model).

The agent's own idea: instead of transitions, store the environment states it visits; each
update restarts the true environment from `batch_size` stored states, rolls each out for
`rollout_length` steps with the current exploration policy, and takes one Q-learning step on
all `batch_size * rollout_length` transitions. It is the upper bound for a learned model: the
same training scheme as the model agents, with a model that makes no errors. Loop, config,
evaluation and saving live in the run machinery (`training/`).
"""

import jax
import jax.numpy as jnp

import agents
import replay_buffer
from training import cli, schema
from training.definition import AgentDefinition

STEP_SIZE_KEY = "alpha_adam"


def state_buffer(env, capacity: int) -> replay_buffer.ReplayBuffer:
    """A ring buffer of whole environment states (every leaf of the state pytree)."""
    example_state = jax.eval_shape(env.reset, jax.random.PRNGKey(0))[0]
    # Integer leaves are grid coordinates (< grid_size): int8 holds them while the grid is
    # smaller than 128, and a quarter of the memory matters at 30 seeds x 100k states.
    small_ints = getattr(env, "grid_size", 0) < 128
    return replay_buffer.ReplayBuffer(
        example_state, capacity, int_dtype=jnp.int8 if small_ints else None
    )


def rollout(env, act, start_state, key: jax.Array, length: int) -> agents.QBatch:
    """`length` steps of the true environment from `start_state`; leading axis `length`.

    `act(obs, key) -> action` is the exploration policy of the current Q. Step `i` uses
    `action_key, env_key = split(split(key, length)[i])`. There is no reset: after the first
    terminal transition the states no longer follow any episode the agent could live, so their
    weight `w` is 0 (the terminal transition itself keeps `w` = 1 and trains with `c` = 0).
    """

    def step(carry, step_key):
        state, obs, weight = carry
        action_key, env_key = jax.random.split(step_key)
        action = act(obs, action_key)
        state, next_obs, reward, terminal, _ = env.step(env_key, state, action)
        continuation = 1.0 - terminal.astype(jnp.float32)
        transition = agents.QBatch(obs, action, reward, next_obs, continuation, weight)
        return (state, next_obs, weight * continuation), transition

    carry = (start_state, env.get_observation(start_state), jnp.float32(1.0))
    return jax.lax.scan(step, carry, jax.random.split(key, length))[1]


def build_agent(cfg: dict, env) -> agents.Agent:
    q_net = agents.q_network(env.num_actions(), agents.MLPConfig.from_config(cfg))
    obs_size = env.observation_size
    states = state_buffer(env, cfg["buffer_size"])
    batch_size, length = cfg["batch_size"], cfg["rollout_length"]

    def init(key):
        q_params = q_net.init(key, jnp.zeros(obs_size))
        learner = agents.new_learner(q_params)
        return learner, states.init()

    def store(buffer, env_state, transition):
        # The state *before* the step: design §9 adds it first thing, and nothing reads the
        # buffer between that moment and this call.
        return states.add(buffer, env_state)

    def update(learner, buffer, key, hp):
        sample_key, rollout_key = jax.random.split(key)
        starts = states.sample(buffer, sample_key, batch_size)

        def act(obs, key):
            q = q_net.apply(learner.q_params, obs)
            return agents.select_action(q, key, cfg["exploration_strat"], hp)

        rollouts = jax.vmap(lambda state, k: rollout(env, act, state, k, length))(
            starts, jax.random.split(rollout_key, batch_size)
        )
        batch = agents.flatten_rollouts(rollouts)
        # One gradient for the B*L transitions (the reference computes it twice, design §12 Q4).
        return agents.q_learning_step(q_net, learner, batch, hp, STEP_SIZE_KEY, cfg["double_DQN"])

    return agents.model_free_agent(q_net, init, store, update)


def flops_per_step(cfg: dict, obs_size: int, num_actions: int) -> int:
    """Acting, and per update the rollouts' Q forwards and one Q step on all their steps (the
    true environment's steps are not counted)."""
    q = agents.mlp_flops(obs_size, num_actions, cfg)
    samples = cfg["batch_size"] * cfg["rollout_length"]
    return agents.per_step_flops(cfg, q, samples * q + agents.q_step_flops(samples, q, cfg))


DEFINITION = AgentDefinition(
    agent_type="perfect_model",
    build_agent=build_agent,
    step_size_key=STEP_SIZE_KEY,
    families=(schema.ONE_OPTIMISER, schema.ROLLOUT),
    flops_per_step=flops_per_step,
)

if __name__ == "__main__":
    cli.main(DEFINITION)
