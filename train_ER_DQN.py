"""DQN with experience replay (SPEC §8, ER).

The agent's own idea: store every real transition; each update samples `batch_size` of them
and takes one Q-learning step. Loop, config, evaluation and saving live in `experiment.py`.
"""

import jax

import agents
import experiment
import loop


def build_agent(cfg: dict, env) -> loop.Agent:
    q_net = agents.q_network(env.num_actions(), agents.MLPConfig.from_config(cfg))
    obs_size = loop.observation_size(env)
    replay = agents.transition_buffer(obs_size, cfg["buffer_size"])

    def init(key):
        q_params = q_net.init(key, jax.numpy.zeros(obs_size))
        learner = agents.new_learner(q_params)
        return learner, replay.init()

    def update(learner, buffer, key, hp):
        batch = agents.to_q_batch(replay.sample(buffer, key, cfg["batch_size"]))
        return agents.q_learning_step(q_net, learner, batch, hp, "alpha_adam", cfg["double_DQN"])

    return loop.Agent(
        init=init,
        q_values=lambda learner, obs, key: q_net.apply(learner.q_params, obs),
        store=loop.store_transition(replay),
        update=update,
        saved_params=loop.saved_q_params,
        diagnostics=agents.Q_DIAGNOSTICS,
    )


if __name__ == "__main__":
    experiment.main("ER", build_agent)
