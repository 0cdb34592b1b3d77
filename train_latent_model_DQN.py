"""DQN trained only on rollouts of a learned latent-space model (design §8, latent model).

The agent's own idea: store every real transition; each update
1. fits the model (encoder, latent transition, decoder, reward and continuation heads) on a batch
   of real transitions with one AdamW step on `model_loss`,
2. encodes observations into sampled latents and imagines `rollout_length` steps in latent space
   with the updated model and the current Q (`rollout`),
3. takes one Q step on the imagined transitions, with latents in place of observations.
Q acts on latents everywhere, also in the environment and in greedy evaluation, where the
observation is first encoded with a sample (`q_values`). Loop, config, evaluation and saving live in
the run machinery (`training/`).
"""

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

import agents
import latent_model
import model_parts
import replay_buffer
from training import cli, schema
from training.definition import AgentDefinition

STEP_SIZE_KEY = "Q_alpha"


class Networks(NamedTuple):
    """The six networks of the agent; all but `q` form the model (`Learner.model_params`)."""

    q: hk.Transformed  # latent -> action values
    phi: hk.Transformed  # encoder: (obs, key) -> (latent, distribution)
    next_phi: hk.Transformed  # transition: (latent, action, key) -> (next latent, distribution)
    obs: hk.Transformed  # decoder: latent -> distribution of the current observation
    reward: hk.Transformed  # (latent, action) -> {'mu', 'sigma'}
    termination: hk.Transformed  # (latent, action) -> {'logit'} of continuing


def build_networks(cfg: dict, num_actions: int, obs_size: int) -> Networks:
    mlp = agents.MLPConfig.from_config(cfg)
    latent = latent_model.LatentConfig.from_config(cfg)
    return Networks(
        q=agents.q_network(num_actions, mlp),
        phi=latent_model.phi_network(latent, mlp),
        next_phi=latent_model.next_phi_network(num_actions, latent, mlp),
        obs=latent_model.obs_network(obs_size, cfg["binary_obs"], cfg["learn_obs_variance"], mlp),
        reward=model_parts.reward_network(num_actions, mlp),
        termination=model_parts.termination_network(num_actions, mlp),
    )


def init_model_params(nets: Networks, key: jax.Array, latent_size: int, obs_size: int):
    """`{'reward', 'termination', 'phi', 'next_phi', 'obs'}`, built from a zero latent."""
    keys = jax.random.split(key, 6)
    phi, action = jnp.zeros(latent_size), jnp.zeros((), jnp.int32)
    return {
        "reward": nets.reward.init(keys[0], phi, action),
        "termination": nets.termination.init(keys[1], phi, action),
        "phi": nets.phi.init(keys[2], jnp.zeros(obs_size), keys[5]),
        "next_phi": nets.next_phi.init(keys[3], phi, action, keys[5]),
        "obs": nets.obs.init(keys[4], phi),
    }


# --------------------------------------------------------------------------------------------
# The model loss (design §8)
# --------------------------------------------------------------------------------------------


def model_loss_terms(
    nets: Networks, cfg: dict, params, transition: replay_buffer.Transition, key: jax.Array
) -> dict[str, jax.Array]:
    """The unweighted loss terms of one real transition (s, a, r, s', terminal)."""
    latent = latent_model.LatentConfig.from_config(cfg)
    phi_key, next_phi_key, prior_key = jax.random.split(key, 3)
    obs, action = transition.obs, transition.action
    continues = 1.0 - transition.terminal.astype(jnp.float32)

    phi, posterior = nets.phi.apply(params["phi"], obs, phi_key)  # φ ~ q(·|s)
    _, next_posterior = nets.phi.apply(params["phi"], transition.next_obs, next_phi_key)  # q'
    _, next_prior = nets.next_phi.apply(params["next_phi"], phi, action, prior_key)  # p'
    kl_posterior, kl_prior = latent_model.kl_balance(next_posterior, next_prior, latent.latent_type)

    reconstruction = model_parts.observation_nll(nets.obs.apply(params["obs"], phi), obs)
    if not cfg["reconstruct_terminal_obs"]:
        # Q6: the reference masks the *current* observation on terminal transitions.
        reconstruction = reconstruction * continues
    return {
        "kl_posterior": kl_posterior,
        "kl_prior": kl_prior,
        "posterior_entropy": latent_model.latent_kl(
            latent.latent_type, posterior, latent_model.base_distribution(latent)
        ),
        "reward": model_parts.reward_nll(
            nets.reward.apply(params["reward"], phi, action), transition.reward
        ),
        "termination": model_parts.continuation_nll(
            nets.termination.apply(params["termination"], phi, action), transition.terminal
        ),
        "reconstruction": reconstruction,
    }


LOSS_WEIGHTS = {
    "kl_posterior": "KL_posterior_weight",
    "kl_prior": "KL_prior_weight",
    "posterior_entropy": "posterior_entropy_weight",
    "reward": "reward_weight",
    "termination": "termination_weight",
    "reconstruction": "obs_prediction_weight",
}


def model_loss(nets: Networks, cfg: dict, params, transitions: replay_buffer.Transition, key, hp):
    """Mean over the batch of the weighted terms; returns (loss, {term: batch mean})."""
    keys = jax.random.split(key, transitions.reward.shape[0])
    terms = jax.vmap(lambda t, k: model_loss_terms(nets, cfg, params, t, k))(transitions, keys)
    per_transition = model_parts.weighted_loss(terms, hp, LOSS_WEIGHTS)
    return jnp.mean(per_transition), {name: jnp.mean(value) for name, value in terms.items()}


# --------------------------------------------------------------------------------------------
# Imagined experience (design §8)
# --------------------------------------------------------------------------------------------


def rollout(nets: Networks, cfg: dict, learner: agents.Learner, start_obs, key, hp):
    """Encode `start_obs` ([N, d]) with samples, then imagine `rollout_length` steps in latent
    space with the current Q and the exploration policy. Returns the `N * L` transitions.

    No gradient reaches these latents, so categorical ones travel as `agents.OneHot` positions:
    the networks reading them add weight rows instead of multiplying mostly-zero inputs.
    """
    model = learner.model_params
    fixed_continuation = cfg["fixed_continuation_if_continuing"] and not cfg["episodic_env"]

    def one_step(carry, key):
        phi, weight, continuation = carry
        if cfg["episodic_env"]:  # continuing: every imagined transition keeps weight 1
            weight = weight * continuation
        action_key, next_key = jax.random.split(key)
        q = nets.q.apply(learner.q_params, phi)
        action = agents.select_action(q, action_key, cfg["exploration_strat"], hp)
        reward = nets.reward.apply(model["reward"], phi, action)["mu"]
        continuation = jax.nn.sigmoid(
            nets.termination.apply(model["termination"], phi, action)["logit"]
        )
        if fixed_continuation:  # Q7 switched off
            continuation = jnp.ones_like(continuation)
        next_phi, _ = nets.next_phi.apply(model["next_phi"], phi, action, next_key, one_hot=True)
        transition = agents.QBatch(phi, action, reward, next_phi, continuation, weight)
        return (next_phi, weight, continuation), transition

    def one_rollout(obs, key):
        encode_key, key = jax.random.split(key)
        phi, _ = nets.phi.apply(model["phi"], obs, encode_key, one_hot=True)
        carry = (phi, jnp.float32(1.0), jnp.float32(1.0))
        return jax.lax.scan(one_step, carry, jax.random.split(key, cfg["rollout_length"]))[1]

    keys = jax.random.split(key, start_obs.shape[0])
    transitions = jax.vmap(one_rollout)(start_obs, keys)  # leaves [N, L, ...]
    return jax.lax.stop_gradient(agents.flatten_rollouts(transitions))


# --------------------------------------------------------------------------------------------
# The agent
# --------------------------------------------------------------------------------------------


def build_agent(cfg: dict, env) -> agents.Agent:
    num_actions, obs_size = env.num_actions(), env.observation_size
    latent_size = latent_model.LatentConfig.from_config(cfg).size
    nets = build_networks(cfg, num_actions, obs_size)
    replay = replay_buffer.transition_buffer(obs_size, cfg["buffer_size"])
    rollout_starts = (
        cfg["rollout_batch_size"] if cfg["seperate_rollout_batch_size"] else cfg["batch_size"]
    )

    def init(key):
        q_key, model_key = jax.random.split(key)
        q_params = nets.q.init(q_key, jnp.zeros(latent_size))
        model_params = init_model_params(nets, model_key, latent_size, obs_size)
        return agents.new_learner(q_params, model_params), replay.init()

    def q_values(learner, obs, key):  # acting and evaluation: Q of a sampled encoding
        phi, _ = nets.phi.apply(learner.model_params["phi"], obs, key, one_hot=True)
        return nets.q.apply(learner.q_params, phi)

    def update(learner, buffer, key, hp):
        sample_key, model_key, start_key, rollout_key = jax.random.split(key, 4)
        batch = replay.sample(buffer, sample_key, cfg["batch_size"])
        learner, model_diagnostics = model_parts.model_step(
            lambda params: model_loss(nets, cfg, params, batch, model_key, hp), learner, hp
        )
        if cfg["seperate_rollout_batch_size"]:
            start_obs = replay.sample(buffer, start_key, rollout_starts).obs
        else:
            start_obs = batch.obs
        imagined = rollout(nets, cfg, learner, start_obs, rollout_key, hp)
        learner, q_diagnostics = agents.q_learning_step(
            nets.q, learner, imagined, hp, STEP_SIZE_KEY, cfg["double_DQN"]
        )
        return learner, {**q_diagnostics, **model_diagnostics}

    return model_parts.learned_model_agent(q_values, init, replay, update, LOSS_WEIGHTS)


def flops_per_step(cfg: dict, obs_size: int, num_actions: int) -> int:
    """Acting (encode, then Q), and per update the model step (forward and backward of the
    encoder on s and s', the transition, the heads and the decoder), the rollouts (an encoding
    of each start, then Q, the transition and the heads at each step) and one Q step."""
    categorical = cfg["latent_type"] == "categorical"
    F = cfg["num_features"] * (cfg["feature_width"] if categorical else 1)
    encoded = F if categorical else 2 * cfg["num_features"]  # logits, or mean and std
    q = agents.mlp_flops(F, num_actions, cfg)
    encoder = agents.mlp_flops(obs_size, encoded, cfg)
    transition = agents.mlp_flops(F + num_actions, encoded, cfg)
    heads = 2 * agents.mlp_flops(F + num_actions, 1, cfg)
    decoded = obs_size * (2 if cfg.get("learn_obs_variance") else 1)
    decoder = agents.mlp_flops(F, decoded, cfg)
    B, L = cfg["batch_size"], cfg["rollout_length"]
    starts = cfg["rollout_batch_size"] if cfg.get("seperate_rollout_batch_size") else B
    model_step = 3 * B * (2 * encoder + transition + heads + decoder)
    rollouts = starts * encoder + starts * L * (q + transition + heads)
    update = model_step + rollouts + agents.q_step_flops(starts * L, q, cfg)
    return agents.per_step_flops(cfg, encoder + q, update)


DEFINITION = AgentDefinition(
    agent_type="latent_model",
    build_agent=build_agent,
    step_size_key=STEP_SIZE_KEY,
    families=(schema.ROLLOUT, schema.MODEL, schema.LATENT),
    flops_per_step=flops_per_step,
)

if __name__ == "__main__":
    cli.main(DEFINITION)
