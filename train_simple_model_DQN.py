"""DQN trained only on rollouts of a learned observation-space model (design §8, simple model).

The agent's own idea: store real transitions, but never train Q on them. Each update samples
`batch_size` of them, (1) takes one step on a model of reward, continuation and next
observation, then (2) rolls the *updated* model out for `rollout_length` steps from the
sampled observations with the current exploration policy, and (3) takes one Q-learning step on
the `batch_size * rollout_length` imagined transitions. Whatever the model generalises beyond
the replayed data reaches Q only through these rollouts. Loop, config, evaluation and
saving live in the run machinery (`training/`).
"""

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

import agents
import model_parts
import observation_model
import replay_buffer
from training import cli, schema
from training.definition import AgentDefinition

STEP_SIZE_KEY = "Q_alpha"


class ModelNetworks(NamedTuple):
    """The three model networks; their parameters form one dict with the same keys, trained
    together by one optimiser (design §5)."""

    reward: hk.Transformed  # (obs, action) -> {'mu', 'sigma'}
    termination: hk.Transformed  # (obs, action) -> {'logit'} of continuing
    next_obs: hk.Transformed  # (obs, action, key) -> (sampled next obs, distribution)


def model_networks(cfg: dict, env) -> ModelNetworks:
    num_actions, mlp = env.num_actions(), agents.MLPConfig.from_config(cfg)
    obs_size = env.observation_size
    return ModelNetworks(
        reward=model_parts.reward_network(num_actions, mlp),
        termination=model_parts.termination_network(num_actions, mlp),
        next_obs=observation_model.next_obs_network(
            num_actions, obs_size, mlp, cfg["binary_obs"], cfg["sample_obs_from_sigmoid"]
        ),
    )


def init_model(model: ModelNetworks, key: jax.Array, obs_size: int) -> agents.Params:
    reward_key, termination_key, next_obs_key = jax.random.split(key, 3)
    obs, action = jnp.zeros(obs_size), jnp.zeros((), jnp.int32)
    return {
        "reward": model.reward.init(reward_key, obs, action),
        "termination": model.termination.init(termination_key, obs, action),
        "next_obs": model.next_obs.init(next_obs_key, obs, action, next_obs_key),
    }


def model_loss_terms(model: ModelNetworks, params, transition: replay_buffer.Transition, key):
    """The three unweighted loss terms of one real transition: reward, continuation, next obs.

    The next-observation term is 0 on a terminal transition: what the environment shows after
    a terminal belongs to no continuation the rollouts will ever use.
    """
    obs, action = transition.obs, transition.action
    reward_dist = model.reward.apply(params["reward"], obs, action)
    termination_dist = model.termination.apply(params["termination"], obs, action)
    _, next_obs_dist = model.next_obs.apply(params["next_obs"], obs, action, key)
    obs_term = model_parts.observation_nll(next_obs_dist, transition.next_obs)
    return {
        "reward": model_parts.reward_nll(reward_dist, transition.reward),
        "termination": model_parts.continuation_nll(termination_dist, transition.terminal),
        "obs": jnp.where(transition.terminal, 0.0, obs_term),
    }


def model_loss(model: ModelNetworks, params, transitions: replay_buffer.Transition, key, hp):
    """Weighted sum of the terms, mean over the batch. Returns (loss, mean of each term)."""
    keys = jax.random.split(key, transitions.reward.shape[0])
    terms = jax.vmap(model_loss_terms, in_axes=(None, None, 0, 0))(model, params, transitions, keys)
    terms = {name: jnp.mean(terms[name]) for name in LOSS_WEIGHTS}  # summed in this order
    return model_parts.weighted_loss(terms, hp, LOSS_WEIGHTS), terms


# The unweighted terms of `model_loss_terms` and the config key weighting each.
LOSS_WEIGHTS = {
    "reward": "reward_weight",
    "termination": "termination_weight",
    "obs": "obs_prediction_weight",
}


def rollout(model: ModelNetworks, params, act, start_obs, key, cfg: dict) -> agents.QBatch:
    """`rollout_length` steps of the learned model from one real observation; leading axis L.

    Reward is the predicted mean and `c` the predicted probability of continuing. Episodic:
    `w <- w * c_prev`, the model's belief that the rollout is still inside the episode.
    Continuing: `w` = 1, and `c` too with `fixed_continuation_if_continuing` (by default the
    reference keeps scaling gamma by the learned `c`, design §12 Q7).
    """
    episodic = cfg["episodic_env"]
    fixed_continuation = cfg["fixed_continuation_if_continuing"] and not episodic

    def step(carry, step_key):
        obs, weight, previous_continuation = carry
        action_key, next_obs_key = jax.random.split(step_key)
        if episodic:
            weight = weight * previous_continuation
        action = act(obs, action_key)
        reward = model.reward.apply(params["reward"], obs, action)["mu"]
        logit = model.termination.apply(params["termination"], obs, action)["logit"]
        continuation = jnp.float32(1.0) if fixed_continuation else jax.nn.sigmoid(logit)
        next_obs, _ = model.next_obs.apply(params["next_obs"], obs, action, next_obs_key)
        transition = agents.QBatch(obs, action, reward, next_obs, continuation, weight)
        return (next_obs, weight, continuation), transition

    carry = (start_obs.astype(jnp.float32), jnp.float32(1.0), jnp.float32(1.0))
    keys = jax.random.split(key, cfg["rollout_length"])
    return jax.lax.scan(step, carry, keys)[1]


def build_agent(cfg: dict, env) -> agents.Agent:
    q_net = agents.q_network(env.num_actions(), agents.MLPConfig.from_config(cfg))
    model = model_networks(cfg, env)
    obs_size = env.observation_size
    replay = replay_buffer.transition_buffer(obs_size, cfg["buffer_size"])
    batch_size = cfg["batch_size"]

    def init(key):
        q_key, model_key = jax.random.split(key)
        q_params = q_net.init(q_key, jnp.zeros(obs_size))
        model_params = init_model(model, model_key, obs_size)
        return agents.new_learner(q_params, model_params), replay.init()

    def update(learner, buffer, key, hp):
        sample_key, model_key, rollout_key = jax.random.split(key, 3)
        transitions = replay.sample(buffer, sample_key, batch_size)
        learner, model_diagnostics = model_parts.model_step(
            lambda params: model_loss(model, params, transitions, model_key, hp), learner, hp
        )
        # The rollouts read the model *after* this step, and Q before its own step (design §8).

        def act(obs, key):
            q = q_net.apply(learner.q_params, obs)
            return agents.select_action(q, key, cfg["exploration_strat"], hp)

        rollouts = jax.vmap(lambda obs, k: rollout(model, learner.model_params, act, obs, k, cfg))(
            transitions.obs, jax.random.split(rollout_key, batch_size)
        )
        batch = agents.flatten_rollouts(rollouts)
        learner, q_diagnostics = agents.q_learning_step(
            q_net, learner, batch, hp, STEP_SIZE_KEY, cfg["double_DQN"]
        )
        return learner, {**q_diagnostics, **model_diagnostics}

    q_values = agents.acting_on_observations(q_net)
    return model_parts.learned_model_agent(q_values, init, replay, update, LOSS_WEIGHTS)


def flops_per_step(cfg: dict, obs_size: int, num_actions: int) -> int:
    """Acting, and per update the model step (forward and backward of its three networks),
    the rollouts (Q and the model forward at each step) and one Q step on all their steps."""
    q = agents.mlp_flops(obs_size, num_actions, cfg)
    heads = 2 * agents.mlp_flops(obs_size + num_actions, 1, cfg)
    model = heads + agents.mlp_flops(obs_size + num_actions, obs_size, cfg)
    B, samples = cfg["batch_size"], cfg["batch_size"] * cfg["rollout_length"]
    update = 3 * B * model + samples * (q + model) + agents.q_step_flops(samples, q, cfg)
    return agents.per_step_flops(cfg, q, update)


DEFINITION = AgentDefinition(
    agent_type="simple_model",
    build_agent=build_agent,
    step_size_key=STEP_SIZE_KEY,
    families=(schema.ROLLOUT, schema.MODEL, schema.OBSERVATION_MODEL),
    flops_per_step=flops_per_step,
)

if __name__ == "__main__":
    cli.main(DEFINITION)
