"""DQN with experience replay (SPEC §8, ER).

The agent's own idea: store every real transition; each update samples `batch_size` of them
and takes one Q-learning step. Loop, config, evaluation and saving live in the run machinery
(`training/`).
"""

import jax

import agents
import replay_buffer
from training import experiment, loop

AGENT_TYPE = "ER"  # the config's agent_type: which keys it reads (training/schema.py)


def build_agent(cfg: dict, env) -> loop.Agent:
    q_net = agents.q_network(env.num_actions(), agents.MLPConfig.from_config(cfg))
    obs_size = env.observation_size
    replay = replay_buffer.transition_buffer(obs_size, cfg["buffer_size"])

    def init(key):
        q_params = q_net.init(key, jax.numpy.zeros(obs_size))
        learner = agents.new_learner(q_params)
        return learner, replay.init()

    def update(learner, buffer, key, hp):
        batch = agents.to_q_batch(replay.sample(buffer, key, cfg["batch_size"]))
        return agents.q_learning_step(q_net, learner, batch, hp, "alpha_adam", cfg["double_DQN"])

    return loop.model_free_agent(q_net, init, loop.store_transition(replay), update)


if __name__ == "__main__":
    experiment.main(AGENT_TYPE, build_agent)
