"""What every agent shares: haiku networks, the AdamW optimiser, the Q-learning step (**the
Q-learning target** is `q_learning_loss`) and action selection (SPEC sections 4, 5, 7, 8).

Everything here is a pure function of one seed; the run machinery (`training/loop.py`) adds the
seed axis with `vmap`. Hyperparameters that do not change shapes (step sizes, temperature, gamma,
loss weights) arrive as traced scalars in a dict `hp`, so a grid over them needs no
recompilation. The replay buffer is `replay_buffer.py`; the parts of the learned models are
`model_parts.py` (reward and continuation heads), `observation_model.py` and `latent_model.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from replay_buffer import BufferState, ReplayBuffer, Transition

Params = Any  # a haiku parameter tree
HParams = dict[str, jax.Array]  # traced hyperparameters, float32 scalars keyed by config name

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
}


# --------------------------------------------------------------------------------------------
# Networks (SPEC §4)
# --------------------------------------------------------------------------------------------


class MLPConfig(NamedTuple):
    """The torso shared by every network of a run."""

    num_hidden_layers: int
    num_hidden_units: int
    activation: str

    @classmethod
    def from_config(cls, cfg: dict) -> MLPConfig:
        return cls(cfg["num_hidden_layers"], cfg["num_hidden_units"], cfg["activation"])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class OneHot:
    """A vector of 0s and 1s kept as the positions of its ones: `index` [..., k] into a vector
    of length `size`. A sampled categorical latent is one (a 1 per feature), and a layer that
    reads it adds k rows of its weight matrix (`Linear`) instead of multiplying `size` inputs,
    nearly all 0: for 32 x 32 latents 33 rows instead of a 1028-wide product."""

    index: jax.Array
    size: int = dataclasses.field(metadata={"static": True})

    def dense(self) -> jax.Array:
        """The vector itself, `[..., size]` float32."""
        rows = self.index.reshape(-1, self.index.shape[-1])
        dense = jnp.zeros((rows.shape[0], self.size), jnp.float32)
        dense = dense.at[jnp.arange(rows.shape[0])[:, None], rows].set(
            1.0, mode="promise_in_bounds"
        )
        return dense.reshape(*self.index.shape[:-1], self.size)


@jax.custom_vjp
def one_hot_matmul(x: OneHot, w: jax.Array) -> jax.Array:
    """`x.dense() @ w` as a sum of the rows of `w` at `x.index`: one gather per position,
    written as separate gathers so that XLA adds them in one pass without materialising the
    `[..., k, out]` rows (on CPU about 8x faster than the dense product at batch 32)."""
    k = x.index.shape[-1]
    return sum(w.at[x.index[..., i]].get(mode="promise_in_bounds") for i in range(k))


def _one_hot_matmul_fwd(x: OneHot, w: jax.Array):
    return one_hot_matmul(x, w), x


def _one_hot_matmul_bwd(x: OneHot, g: jax.Array):
    # The weight gradient as the dense product x^T g: on CPU XLA's scatter-add of g into the
    # rows is several times slower. The input has no gradient (its index is an integer).
    dense = x.dense().reshape(-1, x.size)
    dw = dense.T @ g.reshape(dense.shape[0], -1)
    return jax.tree.map(lambda i: np.zeros(i.shape, jax.dtypes.float0), x), dw


one_hot_matmul.defvjp(_one_hot_matmul_fwd, _one_hot_matmul_bwd)


class Linear(hk.Linear):
    """`hk.Linear` (same name, parameters and initialiser) that also reads a `OneHot` input."""

    def __call__(self, x, *, precision=None):
        if not isinstance(x, OneHot):
            return super().__call__(x, precision=precision)
        w_init = self.w_init or hk.initializers.TruncatedNormal(1.0 / np.sqrt(x.size))
        w = hk.get_parameter("w", [x.size, self.output_size], jnp.float32, init=w_init)
        out = one_hot_matmul(x, w)
        if self.with_bias:
            out = out + hk.get_parameter("b", [self.output_size], jnp.float32, init=self.b_init)
        return out


def mlp_torso(x, mlp: MLPConfig) -> jax.Array:
    """`num_hidden_layers` x (Linear, activation). Called inside a module's `__call__`, so the
    layers are named `linear`, `linear_1`, ... under that module, as in the reference. `x` is an
    array or a `OneHot`."""
    activation = ACTIVATIONS[mlp.activation]
    if not isinstance(x, OneHot):
        x = x.astype(jnp.float32)
    for _ in range(mlp.num_hidden_layers):
        x = activation(Linear(mlp.num_hidden_units)(x))
    return x


def with_action(x, action: jax.Array, num_actions: int):
    """Model networks see the action as a one-hot vector after the flattened input."""
    if isinstance(x, OneHot):
        position = x.size + jnp.expand_dims(action, -1).astype(x.index.dtype)
        return OneHot(jnp.concatenate([x.index, position], axis=-1), x.size + num_actions)
    return jnp.concatenate([x.astype(jnp.float32), jax.nn.one_hot(action, num_actions)], axis=-1)


class QFunction(hk.Module):
    """Action values of an observation (or a latent): `[..., d] -> [..., A]`."""

    def __init__(self, num_actions: int, mlp: MLPConfig, name: str = "q_function"):
        super().__init__(name=name)
        self.num_actions, self.mlp = num_actions, mlp

    def __call__(self, x: jax.Array) -> jax.Array:
        h = mlp_torso(x, self.mlp)  # the torso first, so the head is the last `linear_k`
        return hk.Linear(self.num_actions)(h)


def transform(module_fn: Callable) -> hk.Transformed:
    """Each network is its own `hk.without_apply_rng(hk.transform(...))` (SPEC §4)."""
    return hk.without_apply_rng(hk.transform(module_fn))


def q_network(num_actions: int, mlp: MLPConfig) -> hk.Transformed:
    return transform(lambda x: QFunction(num_actions, mlp)(x))


# FLOP counts from the layer sizes: each agent's `flops_per_step` (its definition) adds them up
# for the benchmark's FLOP rate and the Figure 4 estimate (`training/measure.py`). A forward
# pass is 2 * fan_in * fan_out per layer and sample, forward + backward 3x that.


def mlp_flops(fan_in: int, fan_out: int, cfg: dict) -> int:
    """Forward matmul FLOPs of one sample through an MLP of the config's torso."""
    h, n = cfg["num_hidden_units"], cfg["num_hidden_layers"]
    return 2 * (fan_in * h + (n - 1) * h * h + h * fan_out)


def q_step_flops(samples: int, q_forward: int, cfg: dict) -> int:
    """A Q-learning step on `samples` transitions: forward and backward on s, the target's
    forward on s' (double DQN adds the online network's forward on s')."""
    target_forwards = 2 if cfg.get("double_DQN") else 1
    return samples * (3 * q_forward + target_forwards * q_forward)


def per_step_flops(cfg: dict, act: int, update: int) -> int:
    """One environment step of one seed: acting, and `updates_per_step` updates."""
    return act + cfg.get("updates_per_step", 1) * update


# --------------------------------------------------------------------------------------------
# Optimiser (SPEC §5)
# --------------------------------------------------------------------------------------------


def adamw(learning_rate, b1, b2, eps, weight_decay) -> optax.GradientTransformation:
    """The reference's AdamW: `x <- x - lr * m_hat / (sqrt(v_hat) + eps) - wd * x`.

    Unlike `optax.adamw`, the decay is *not* multiplied by the step size, hence the decay is
    added after the scaling by `-lr`. Every argument may be a traced scalar.
    """
    return optax.chain(
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale(-learning_rate),
        optax.add_decayed_weights(-weight_decay),
    )


def optimizer(hp: HParams, step_size_key: str) -> optax.GradientTransformation:
    """The AdamW of a run, with the step size taken from `hp[step_size_key]`."""
    return adamw(hp[step_size_key], hp["b1_adam"], hp["b2_adam"], hp["eps_adam"], hp["wd_adam"])


def init_optimizer(params: Params) -> optax.OptState:
    """Optimiser state for `params`; its layout does not depend on the hyperparameter values."""
    return adamw(1.0, 0.9, 0.999, 1e-8, 0.0).init(params)


def gradient_step(loss_fn, params, opt_state, hp: HParams, step_size_key: str):
    """One AdamW step on `loss_fn(params) -> (loss, aux)`; returns (params, opt, loss, aux)."""
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer(hp, step_size_key).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux


# --------------------------------------------------------------------------------------------
# Q-learning (SPEC §8)
# --------------------------------------------------------------------------------------------


class QBatch(NamedTuple):
    """Transitions for one Q step; leading axis = batch."""

    obs: Any  # [N, d] observation or latent s_tm1 (a categorical latent as a `OneHot`)
    action: jax.Array  # [N] int32 a_tm1
    reward: jax.Array  # [N] float32 r_t
    next_obs: Any  # [N, d] s_t, the same kind
    continuation: jax.Array  # [N] c_t: 0 terminal / 1 otherwise, or the model's probability
    weight: jax.Array  # [N] w: 0 after a rollout's first terminal transition, else 1


def flatten_rollouts(rollouts: QBatch) -> QBatch:
    """`N` rollouts of `L` steps (leaves [N, L, ...]) as one batch of `N * L` transitions for
    the Q step: the perfect, simple and latent models' rollouts alike."""
    return jax.tree.map(lambda x: x.reshape((-1, *x.shape[2:])), rollouts)


def q_learning_loss(q_tm1, a_tm1, r_t, c_t, q_t_target, q_t_online, w, gamma, double_dqn: bool):
    """Per-transition squared TD error `w * (Q(s)[a] - y)^2`, no factor 1/2.

    `y = r + gamma * c * max_a' Q_target(s')[a']`, or with double DQN
    `y = r + gamma * c * Q_target(s')[argmax Q_online(s')]`. No gradient flows into `y`.
    """
    if double_dqn:
        bootstrap = q_t_target[jnp.argmax(q_t_online)]
    else:
        bootstrap = jnp.max(q_t_target)
    y = jax.lax.stop_gradient(r_t + gamma * c_t * bootstrap)
    return w * (q_tm1[a_tm1] - y) ** 2


class Learner(NamedTuple):
    """Everything an agent learns (one seed). Model fields stay `None` for model-free agents."""

    q_params: Params
    q_target: Params
    q_opt: optax.OptState
    model_params: Params = None
    model_opt: optax.OptState = None


def new_learner(q_params: Params, model_params: Params = None) -> Learner:
    """A learner at initialisation: target = online Q parameters, fresh AdamW states."""
    if model_params is None:
        return Learner(q_params, q_params, init_optimizer(q_params))
    return Learner(
        q_params, q_params, init_optimizer(q_params), model_params, init_optimizer(model_params)
    )


# What `q_learning_step` reports of each Q step (`Agent.diagnostics`).
Q_DIAGNOSTICS = ("q_loss", "mean_abs_q")


def q_learning_step(
    q_net: hk.Transformed,
    learner: Learner,
    batch: QBatch,
    hp: HParams,
    step_size_key: str,
    double_dqn: bool,
) -> tuple[Learner, dict[str, jax.Array]]:
    """One Q step on the mean over the batch (zero-weight rows stay in the denominator).

    Returns the learner and the diagnostics `Q_DIAGNOSTICS`: the loss before the step and the
    mean |Q(s, a)| over the batch and every action, what a researcher looks at first when Q
    diverges or collapses.
    """

    def loss_fn(params):
        q_tm1 = q_net.apply(params, batch.obs)
        q_t_target = q_net.apply(learner.q_target, batch.next_obs)
        q_t_online = q_net.apply(params, batch.next_obs) if double_dqn else q_t_target
        per_sample = jax.vmap(q_learning_loss, in_axes=(0, 0, 0, 0, 0, 0, 0, None, None))(
            q_tm1,
            batch.action,
            batch.reward,
            batch.continuation,
            q_t_target,
            q_t_online,
            batch.weight,
            hp["gamma"],
            double_dqn,
        )
        return jnp.mean(per_sample), jnp.mean(jnp.abs(q_tm1))

    params, opt_state, loss, mean_abs_q = gradient_step(
        loss_fn, learner.q_params, learner.q_opt, hp, step_size_key
    )
    diagnostics = {"q_loss": loss, "mean_abs_q": mean_abs_q}
    return learner._replace(q_params=params, q_opt=opt_state), diagnostics


def to_q_batch(transitions: Transition) -> QBatch:
    """Real transitions as a Q batch: `c` = 0 on terminal transitions, weights 1."""
    return QBatch(
        obs=transitions.obs,
        action=transitions.action,
        reward=transitions.reward,
        next_obs=transitions.next_obs,
        continuation=1.0 - transitions.terminal.astype(jnp.float32),
        weight=jnp.ones_like(transitions.reward),
    )


# --------------------------------------------------------------------------------------------
# Action selection (SPEC §7)
# --------------------------------------------------------------------------------------------


def select_action(q: jax.Array, key: jax.Array, strategy: str, hp: HParams) -> jax.Array:
    """Exploration policy on action values `q` ([A]). `strategy` is static."""
    if strategy == "softmax":
        return jax.random.categorical(key, q / hp["softmax_temp"])
    if strategy == "epsilon_greedy":
        explore_key, action_key = jax.random.split(key)
        random_action = jax.random.randint(action_key, (), 0, q.shape[-1])
        explore = jax.random.uniform(explore_key) < hp["epsilon"]
        return jnp.where(explore, random_action, jnp.argmax(q))
    raise ValueError(f"exploration_strat: unknown {strategy!r}")  # the schema admits none


# --------------------------------------------------------------------------------------------
# What an agent is to the run machinery (`training/loop.py` steps it, one seed at a time)
# --------------------------------------------------------------------------------------------


class Agent(NamedTuple):
    """An agent's own ideas as pure functions of one seed (the runner adds the seed axis)."""

    # key -> (Learner, BufferState): initial parameters, optimiser states and an empty buffer
    init: Callable[[jax.Array], tuple[Learner, BufferState]]
    # (learner, obs [d], key) -> action values [A]; a latent model encodes obs with a sample
    q_values: Callable[[Learner, jax.Array, jax.Array], jax.Array]
    # (buffer, env state before the step, transition) -> buffer
    store: Callable[[BufferState, Any, Transition], BufferState]
    # (learner, buffer, key, hp) -> (learner, diagnostics): one update of SPEC §8, and a dict
    # of float32 scalars named by `diagnostics` (losses, mean |Q|) for the `.out` file
    update: Callable[[Learner, BufferState, jax.Array, HParams], Any]
    # learner -> {'Q': params, 'model': params}: what `<output>.params` keeps
    saved_params: Callable[[Learner], dict]
    # names of the diagnostics `update` reports besides the learner (`Q_DIAGNOSTICS`
    # and the model's loss terms): each a float32 scalar, recorded in `.out` per evaluation
    diagnostics: tuple[str, ...] = ()


def store_transition(replay: ReplayBuffer):
    """`Agent.store` of the agents that replay real transitions."""
    return lambda buffer, env_state, transition: replay.add(buffer, transition)


def acting_on_observations(q_net: hk.Transformed):
    """`Agent.q_values` of the agents whose Q reads the observation itself (not a latent)."""
    return lambda learner, obs, key: q_net.apply(learner.q_params, obs)


def model_free_agent(q_net: hk.Transformed, init, store, update) -> Agent:
    """An agent without a learned model (ER, the perfect model): Q acts on observations,
    `.params` keeps Q, and the update reports the Q step's diagnostics."""
    return Agent(
        init=init,
        q_values=acting_on_observations(q_net),
        store=store,
        update=update,
        saved_params=lambda learner: {"Q": learner.q_params},
        diagnostics=Q_DIAGNOSTICS,
    )
