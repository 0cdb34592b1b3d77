"""DQN with experience replay (design §8, ER).

The agent's own idea: store every real transition; each update samples `batch_size` of them
and takes one Q-learning step. Loop, config, evaluation and saving live in the run machinery
(`training/`).
"""

import jax

import agents
import replay_buffer
from training import cli, schema
from training.definition import AgentDefinition

STEP_SIZE_KEY = "alpha_adam"


def build_agent(cfg: dict, env) -> agents.Agent:
    q_net = agents.q_network(env.num_actions(), agents.MLPConfig.from_config(cfg))
    obs_size = env.observation_size
    replay = replay_buffer.transition_buffer(obs_size, cfg["buffer_size"])

    def init(key):
        q_params = q_net.init(key, jax.numpy.zeros(obs_size))
        learner = agents.new_learner(q_params)
        return learner, replay.init()

    def update(learner, buffer, key, hp):
        batch = agents.to_q_batch(replay.sample(buffer, key, cfg["batch_size"]))
        return agents.q_learning_step(q_net, learner, batch, hp, STEP_SIZE_KEY, cfg["double_DQN"])

    return agents.model_free_agent(q_net, init, agents.store_transition(replay), update)


def flops_per_step(cfg: dict, obs_size: int, num_actions: int) -> int:
    q = agents.mlp_flops(obs_size, num_actions, cfg)
    return agents.per_step_flops(cfg, q, agents.q_step_flops(cfg["batch_size"], q, cfg))


DEFINITION = AgentDefinition(
    agent_type="ER",
    build_agent=build_agent,
    step_size_key=STEP_SIZE_KEY,
    families=(schema.ONE_OPTIMISER,),
    flops_per_step=flops_per_step,
)

if __name__ == "__main__":
    cli.main(DEFINITION)
