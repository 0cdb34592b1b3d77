"""The latent model's networks and distributions (design §4 and §8): encoder (`phi`),
latent transition (`next_phi`), decoder (`obs`), their latent heads, and the KL terms. Its reward
and continuation heads are `model_parts.py`'s; its loss and rollout are the agent's own idea, in
`train_latent_model_DQN.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from agents import MLPConfig, OneHot, mlp_torso, transform, with_action

STD_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "sigmoid2": lambda x: 2.0 * jax.nn.sigmoid(x / 2.0),
}
MIN_SIGMA = 1e-6  # every learned std is clipped below at this value
LatentDist = dict[str, jax.Array]  # {'mu', 'sigma'} ([F] each) or {'probs', 'log_probs'} ([F, W])


class LatentConfig(NamedTuple):
    """Shape and parameterisation of the latent state (design §4, latent heads)."""

    latent_type: str  # gaussian, tanh_gaussian or categorical
    num_features: int  # F
    feature_width: int | None  # W (categorical only)
    std_act: str  # softplus, sigmoid or sigmoid2
    min_std: float  # added to the encoder's std (not the transition's)

    @classmethod
    def from_config(cls, cfg: dict) -> LatentConfig:
        return cls(
            cfg["latent_type"],
            cfg["num_features"],
            cfg["feature_width"],
            cfg["std_act"],
            cfg["min_std"],
        )

    @property
    def size(self) -> int:
        """Length of the flat latent that other networks read: F*W categorical, else F."""
        if self.latent_type == "categorical":
            return self.num_features * self.feature_width
        return self.num_features


def sample_categorical(key: jax.Array, probs: jax.Array) -> jax.Array:
    """One category per row of `probs` ([..., W]) by inverting the CDF with one uniform per row.

    The same distribution as `jax.random.categorical`, which draws W Gumbel variates per row:
    with 32 x 32 latents the random bits were about half of the categorical agent's rollout time
    on CPU. A category of probability 0 is never drawn; rounding at the top of the CDF is clipped.
    """
    u = jax.random.uniform(key, probs.shape[:-1] + (1,))
    index = jnp.sum(jnp.cumsum(probs, axis=-1) < u, axis=-1)
    return jnp.minimum(index, probs.shape[-1] - 1)


def latent_head(
    h: jax.Array, latent: LatentConfig, key: jax.Array, min_std: float, one_hot: bool = False
):
    """The output layer(s) of the encoder and the transition network, for one sample.

    Returns `(flat sampled latent, distribution)`. Gaussian: the mean head is the next
    `hk.Linear`, the std head the one after; the sample is reparameterised (and squashed by tanh
    for `tanh_gaussian`). Categorical: one category per feature, one-hot, with the
    straight-through estimator, so the forward value is one-hot and the gradient that of `probs`;
    with `one_hot` (where no gradient reaches the sample: acting, rollouts) the same sample as a
    `OneHot`, whose ones are at `f * W + category` for feature `f`.
    """
    F = latent.num_features
    if latent.latent_type == "categorical":
        W = latent.feature_width
        logits = hk.Linear(F * W)(h).reshape(F, W)
        probs, log_probs = jax.nn.softmax(logits), jax.nn.log_softmax(logits)
        category = sample_categorical(key, probs)
        distribution = {"probs": probs, "log_probs": log_probs}
        if one_hot:
            return OneHot(jnp.arange(F) * W + category, F * W), distribution
        sample = probs + jax.lax.stop_gradient(jax.nn.one_hot(category, W) - probs)
        return sample.reshape(-1), distribution
    mu = hk.Linear(F)(h)
    sigma = jnp.maximum(STD_ACTIVATIONS[latent.std_act](hk.Linear(F)(h)), MIN_SIGMA) + min_std
    sample = mu + sigma * jax.random.normal(key, mu.shape)
    if latent.latent_type == "tanh_gaussian":
        sample = jnp.tanh(sample)
    return sample, {"mu": mu, "sigma": sigma}


class PhiFunction(hk.Module):
    """Encoder: observation [d], key -> (sampled latent [D], its distribution)."""

    def __init__(self, latent: LatentConfig, mlp: MLPConfig, name: str = "phi_function"):
        super().__init__(name=name)
        self.latent, self.mlp = latent, mlp

    def __call__(self, obs: jax.Array, key: jax.Array, one_hot: bool = False):
        h = mlp_torso(obs, self.mlp)
        return latent_head(h, self.latent, key, self.latent.min_std, one_hot)


class NextPhiFunction(hk.Module):
    """Transition: latent [D], action, key -> (sampled next latent [D], its distribution)."""

    def __init__(
        self,
        num_actions: int,
        latent: LatentConfig,
        mlp: MLPConfig,
        name: str = "next_phi_function",
    ):
        super().__init__(name=name)
        self.num_actions, self.latent, self.mlp = num_actions, latent, mlp

    def __call__(self, phi, action: jax.Array, key: jax.Array, one_hot: bool = False):
        h = mlp_torso(with_action(phi, action, self.num_actions), self.mlp)
        return latent_head(h, self.latent, key, 0.0, one_hot)


class ObsFunction(hk.Module):
    """Decoder: latent [D] -> distribution of the current observation [d]: `{'logit'}` for
    binary observations, else `{'mu', 'sigma'}` (sigma learned or 1)."""

    def __init__(
        self,
        obs_size: int,
        binary_obs: bool,
        learn_obs_variance: bool,
        mlp: MLPConfig,
        name: str = "obs_function",
    ):
        super().__init__(name=name)
        self.obs_size, self.binary_obs, self.learn_obs_variance = (
            obs_size,
            binary_obs,
            learn_obs_variance,
        )
        self.mlp = mlp

    def __call__(self, phi: jax.Array) -> dict[str, jax.Array]:
        h = mlp_torso(phi, self.mlp)
        if self.binary_obs:
            return {"logit": hk.Linear(self.obs_size)(h)}
        mu = hk.Linear(self.obs_size)(h)
        if self.learn_obs_variance:
            sigma = jnp.maximum(jax.nn.softplus(hk.Linear(self.obs_size)(h)), MIN_SIGMA)
        else:
            sigma = jnp.ones_like(mu)
        return {"mu": mu, "sigma": sigma}


def phi_network(latent: LatentConfig, mlp: MLPConfig) -> hk.Transformed:
    return transform(lambda obs, key, one_hot=False: PhiFunction(latent, mlp)(obs, key, one_hot))


def next_phi_network(num_actions: int, latent: LatentConfig, mlp: MLPConfig) -> hk.Transformed:
    return transform(
        lambda phi, a, key, one_hot=False: NextPhiFunction(num_actions, latent, mlp)(
            phi, a, key, one_hot
        )
    )


def obs_network(
    obs_size: int, binary_obs: bool, learn_obs_variance: bool, mlp: MLPConfig
) -> hk.Transformed:
    return transform(lambda phi: ObsFunction(obs_size, binary_obs, learn_obs_variance, mlp)(phi))


def gaussian_kl(p1: LatentDist, p2: LatentDist) -> jax.Array:
    """KL(p1 || p2) of diagonal Gaussians, summed over features."""
    mu1, sigma1, mu2, sigma2 = p1["mu"], p1["sigma"], p2["mu"], p2["sigma"]
    log_ratio = jnp.log(sigma2) - jnp.log(sigma1)
    return jnp.sum(log_ratio + (sigma1**2 + (mu1 - mu2) ** 2) / (2.0 * sigma2**2) - 0.5)


def categorical_kl(p1: LatentDist, p2: LatentDist) -> jax.Array:
    """KL(p1 || p2) of independent categoricals, summed over categories and features."""
    return jnp.sum(p1["probs"] * (p1["log_probs"] - p2["log_probs"]))


def latent_kl(latent_type: str, p1: LatentDist, p2: LatentDist) -> jax.Array:
    """KL(p1 || p2) for the latent type (tanh_gaussian: of the Gaussians before the tanh)."""
    if latent_type == "categorical":
        return categorical_kl(p1, p2)
    return gaussian_kl(p1, p2)


def base_distribution(latent: LatentConfig) -> LatentDist:
    """The base of the posterior-entropy term: standard normal, or uniform categorical."""
    F = latent.num_features
    if latent.latent_type == "categorical":
        W = latent.feature_width
        return {"probs": jnp.full((F, W), 1.0 / W), "log_probs": jnp.full((F, W), -jnp.log(W))}
    return {"mu": jnp.zeros(F), "sigma": jnp.ones(F)}


def kl_balance(posterior: LatentDist, prior: LatentDist, latent_type: str):
    """(KL(q' || sg(p')), KL(sg(q') || p')): the first trains the encoder toward the transition
    prediction, the second the transition network toward the encoding."""
    sg = jax.lax.stop_gradient
    return (
        latent_kl(latent_type, posterior, sg(prior)),
        latent_kl(latent_type, sg(posterior), prior),
    )
