"""The simple model's observation-space model: the next-observation network (design §4).
Its reward and continuation heads are `model_parts.py`'s; its loss and rollout are the agent's
own idea, in `train_simple_model_DQN.py`.
"""

from __future__ import annotations

import haiku as hk
import jax
import jax.numpy as jnp

from agents import MLPConfig, mlp_torso, transform, with_action


class NextObsFunction(hk.Module):
    """Next-observation model: observation [d], action, key -> (sampled next obs [d], its
    distribution).

    Binary observations: independent bits, distribution `{'logit': [d]}`. By default a bit fires
    with probability equal to the raw *logit* (design §12 Q2: the reference's behaviour; logits
    <= 0 never fire, >= 1 always do); `sample_from_sigmoid` uses sigmoid(logit), the probability
    the loss trains. Otherwise a unit-variance Gaussian, `{'mu': [d], 'sigma': 1}`, sampled as
    mu + N(0, 1). The sample is float32 either way, so a rollout feeds it back to the model and
    to Q without conversion.
    """

    def __init__(
        self,
        num_actions: int,
        obs_size: int,
        mlp: MLPConfig,
        binary_obs: bool,
        sample_from_sigmoid: bool = False,
        name: str = "next_obs_function",
    ):
        super().__init__(name=name)
        self.num_actions, self.obs_size, self.mlp = num_actions, obs_size, mlp
        self.binary_obs, self.sample_from_sigmoid = binary_obs, sample_from_sigmoid

    def __call__(self, x: jax.Array, action: jax.Array, key: jax.Array):
        h = mlp_torso(with_action(x, action, self.num_actions), self.mlp)
        out = hk.Linear(self.obs_size)(h)
        if self.binary_obs:
            probability = jax.nn.sigmoid(out) if self.sample_from_sigmoid else out
            sample = jax.random.uniform(key, out.shape) < probability
            return sample.astype(jnp.float32), {"logit": out}
        sample = out + jax.random.normal(key, out.shape)
        return sample, {"mu": out, "sigma": jnp.ones_like(out)}


def next_obs_network(
    num_actions: int,
    obs_size: int,
    mlp: MLPConfig,
    binary_obs: bool,
    sample_from_sigmoid: bool = False,
) -> hk.Transformed:
    return transform(
        lambda x, a, key: NextObsFunction(
            num_actions, obs_size, mlp, binary_obs, sample_from_sigmoid
        )(x, a, key)
    )
