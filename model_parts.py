"""What the observation-space model and the latent model share: the reward and continuation
heads, the negative log-likelihoods their losses are made of, the weighted loss and the model's
gradient step (`model_step`), the names their loss terms have in `.out`, and the agent they
make (`learned_model_agent`) (design §4 and §8).

The heads read an input (an observation or a latent) with the action one-hot after it.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

import agents
from agents import MLPConfig, mlp_torso, transform, with_action
from replay_buffer import ReplayBuffer


class _ActionConditionedHead(hk.Module):
    """A head that reads (input, action): the MLP torso, then one number per sample
    (`_scalar_output`)."""

    def __init__(self, num_actions: int, mlp: MLPConfig, name: str):
        super().__init__(name=name)
        self.num_actions, self.mlp = num_actions, mlp


def _scalar_output(head: _ActionConditionedHead, x, action: jax.Array) -> jax.Array:
    # A function, not a method: haiku names the layers a method other than `__call__` creates
    # `<module>/~<method>/linear`, and the parameter names must stay the reference's.
    h = mlp_torso(with_action(x, action, head.num_actions), head.mlp)
    return hk.Linear(1)(h)[..., 0]


class RewardFunction(_ActionConditionedHead):
    """Reward model: a unit-variance Gaussian whose mean is predicted from (input, action)."""

    def __init__(self, num_actions: int, mlp: MLPConfig, name: str = "reward_function"):
        super().__init__(num_actions, mlp, name)

    def __call__(self, x: jax.Array, action: jax.Array) -> dict[str, jax.Array]:
        mu = _scalar_output(self, x, action)
        return {"mu": mu, "sigma": jnp.ones_like(mu)}


class TerminationFunction(_ActionConditionedHead):
    """Termination model: the logit of *continuing* (not terminating) after (input, action)."""

    def __init__(self, num_actions: int, mlp: MLPConfig, name: str = "termination_function"):
        super().__init__(num_actions, mlp, name)

    def __call__(self, x: jax.Array, action: jax.Array) -> dict[str, jax.Array]:
        return {"logit": _scalar_output(self, x, action)}


def reward_network(num_actions: int, mlp: MLPConfig) -> hk.Transformed:
    return transform(lambda x, a: RewardFunction(num_actions, mlp)(x, a))


def termination_network(num_actions: int, mlp: MLPConfig) -> hk.Transformed:
    return transform(lambda x, a: TerminationFunction(num_actions, mlp)(x, a))


def gaussian_nll(x: jax.Array, mu: jax.Array, sigma: jax.Array) -> jax.Array:
    """Elementwise `-log N(x; mu, sigma^2)`, constant included."""
    return 0.5 * jnp.log(2.0 * jnp.pi) + jnp.log(sigma) + 0.5 * ((x - mu) / sigma) ** 2


def bernoulli_nll(x: jax.Array, logit: jax.Array) -> jax.Array:
    """Elementwise `-log Bern(x; sigmoid(logit))`, written as `softplus(logit) - x * logit` so
    that large logits neither overflow nor take the log of 0."""
    return jax.nn.softplus(logit) - x * logit


def reward_nll(reward_dist: dict[str, jax.Array], reward: jax.Array) -> jax.Array:
    """Reward term of a model loss for one transition: Gaussian NLL of the observed reward."""
    return gaussian_nll(reward, reward_dist["mu"], reward_dist["sigma"])


def continuation_nll(termination_dist: dict[str, jax.Array], terminal: jax.Array) -> jax.Array:
    """Termination term for one transition. The head's logit is that of *continuing*, so the
    Bernoulli target is `not terminal`."""
    return bernoulli_nll(1.0 - terminal.astype(jnp.float32), termination_dist["logit"])


def observation_nll(obs_dist: dict[str, jax.Array], obs: jax.Array) -> jax.Array:
    """Observation term for one observation, summed over its bits (Bernoulli, `{'logit'}`) or
    dimensions (Gaussian, `{'mu', 'sigma'}`)."""
    obs = obs.astype(jnp.float32)
    if "logit" in obs_dist:
        return jnp.sum(bernoulli_nll(obs, obs_dist["logit"]), axis=-1)
    return jnp.sum(gaussian_nll(obs, obs_dist["mu"], obs_dist["sigma"]), axis=-1)


def weighted_loss(terms: dict[str, jax.Array], hp: agents.HParams, weights: dict[str, str]):
    """A model's loss: its terms, each times the traced hyperparameter its loss-weight table
    (`weights`: term -> config key) names, summed in the order of `terms` (float sums depend on
    the order: each model keeps the reference's)."""
    return sum(hp[weights[name]] * value for name, value in terms.items())


def model_step(loss_fn, learner: agents.Learner, hp: agents.HParams):
    """One AdamW step (`model_alpha`) of all the model's networks together on
    `loss_fn(params) -> (weighted loss, {term: batch mean})`. Returns (learner, diagnostics):
    the weighted loss before the step and each term's batch mean (`model_diagnostics`)."""
    params, opt_state, loss, terms = agents.gradient_step(
        loss_fn, learner.model_params, learner.model_opt, hp, "model_alpha"
    )
    learner = learner._replace(model_params=params, model_opt=opt_state)
    return learner, model_diagnostics(loss, terms)


def model_diagnostics(loss: jax.Array, terms: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A model step's weighted loss and its unweighted terms, named for `.out`:
    `model_loss`, `model_<term>` (`model_diagnostic_names`)."""
    return {"model_loss": loss, **{f"model_{name}": value for name, value in terms.items()}}


def model_diagnostic_names(term_names) -> tuple[str, ...]:
    return ("model_loss", *(f"model_{name}" for name in term_names))


def learned_model_agent(q_values, init, replay: ReplayBuffer, update, model_terms) -> agents.Agent:
    """An agent with a learned model (simple, latent): it stores real transitions, `.params`
    keeps Q and the model, and the update reports the model's loss and each of its
    `model_terms` too."""
    return agents.Agent(
        init=init,
        q_values=q_values,
        store=agents.store_transition(replay),
        update=update,
        saved_params=lambda learner: {"Q": learner.q_params, "model": learner.model_params},
        diagnostics=agents.Q_DIAGNOSTICS + model_diagnostic_names(model_terms),
    )
