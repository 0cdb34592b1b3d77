"""What the agents are made of: haiku networks, the AdamW optimiser, the per-sample losses,
action selection and the replay buffer (SPEC sections 4-8).

Everything here is a pure function of one seed; `experiment.py` adds the seed axis with `vmap`.
Hyperparameters that do not change shapes (step sizes, temperature, gamma, loss weights) arrive
as traced scalars in a dict `hp`, so a grid over them needs no recompilation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any  # a haiku parameter tree
HParams = dict[str, jax.Array]  # traced hyperparameters, float32 scalars keyed by config name

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
}
EXPLORATION_STRATEGIES = ("softmax", "epsilon_greedy")


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


class RewardFunction(hk.Module):
    """Reward model: a unit-variance Gaussian whose mean is predicted from (input, action)."""

    def __init__(self, num_actions: int, mlp: MLPConfig, name: str = "reward_function"):
        super().__init__(name=name)
        self.num_actions, self.mlp = num_actions, mlp

    def __call__(self, x: jax.Array, action: jax.Array) -> dict[str, jax.Array]:
        h = mlp_torso(with_action(x, action, self.num_actions), self.mlp)
        mu = hk.Linear(1)(h)[..., 0]
        return {"mu": mu, "sigma": jnp.ones_like(mu)}


class TerminationFunction(hk.Module):
    """Termination model: the logit of *continuing* (not terminating) after (input, action)."""

    def __init__(self, num_actions: int, mlp: MLPConfig, name: str = "termination_function"):
        super().__init__(name=name)
        self.num_actions, self.mlp = num_actions, mlp

    def __call__(self, x: jax.Array, action: jax.Array) -> dict[str, jax.Array]:
        h = mlp_torso(with_action(x, action, self.num_actions), self.mlp)
        return {"logit": hk.Linear(1)(h)[..., 0]}


def transform(module_fn: Callable) -> hk.Transformed:
    """Each network is its own `hk.without_apply_rng(hk.transform(...))` (SPEC §4)."""
    return hk.without_apply_rng(hk.transform(module_fn))


def q_network(num_actions: int, mlp: MLPConfig) -> hk.Transformed:
    return transform(lambda x: QFunction(num_actions, mlp)(x))


def reward_network(num_actions: int, mlp: MLPConfig) -> hk.Transformed:
    return transform(lambda x, a: RewardFunction(num_actions, mlp)(x, a))


def termination_network(num_actions: int, mlp: MLPConfig) -> hk.Transformed:
    return transform(lambda x, a: TerminationFunction(num_actions, mlp)(x, a))


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


# What `q_learning_step` reports of each Q step (`loop.Agent.diagnostics`).
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


def model_diagnostics(loss: jax.Array, terms: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A model step's weighted loss and its unweighted terms, named for `.out`:
    `model_loss`, `model_<term>` (`model_diagnostic_names`)."""
    return {"model_loss": loss, **{f"model_{name}": value for name, value in terms.items()}}


def model_diagnostic_names(term_names) -> tuple[str, ...]:
    return ("model_loss", *(f"model_{name}" for name in term_names))


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
    raise ValueError(
        f"exploration_strat: unknown {strategy!r}; expected one of {EXPLORATION_STRATEGIES}"
    )


# --------------------------------------------------------------------------------------------
# Observation-space model (simple model)
# --------------------------------------------------------------------------------------------


class NextObsFunction(hk.Module):
    """Next-observation model: observation [d], action, key -> (sampled next obs [d], its
    distribution).

    Binary observations: independent bits, distribution `{'logit': [d]}`. By default a bit fires
    with probability equal to the raw *logit* (SPEC §12 Q2: the reference's behaviour; logits
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


# --------------------------------------------------------------------------------------------
# Replay buffer (SPEC §6)
# --------------------------------------------------------------------------------------------


class Transition(NamedTuple):
    """One real transition as stored by ER, simple and latent agents."""

    obs: jax.Array  # [d] bool
    action: jax.Array  # [] int32
    reward: jax.Array  # [] float32
    next_obs: jax.Array  # [d] bool
    terminal: jax.Array  # [] bool


class BufferState(NamedTuple):
    """A ring buffer of one seed. `storage` has the item's tree structure; each leaf carries a
    leading `capacity` axis and is kept in its compact storage form (see `ReplayBuffer`)."""

    storage: Any
    position: jax.Array  # [] int32, the slot written next
    size: jax.Array  # [] int32, number of written slots (<= capacity)


def _pack_bits(x: jax.Array) -> jax.Array:
    return jnp.packbits(x.reshape(-1))


class ReplayBuffer:
    """Static description of a ring buffer: its capacity and how each leaf is stored.

    Boolean leaves (binary observations, wall grids, button states) are stored as packed bits,
    8 per byte, and unpacked on sampling, so sampled items equal the added ones bit for bit.
    Integer leaves are stored in `int_dtype` when given (e.g. int8 grid positions); other leaves
    are stored as they are.
    """

    def __init__(self, example_item: Any, capacity: int, int_dtype: Any = None):
        leaves, self.treedef = jax.tree_util.tree_flatten(example_item)
        self.specs = [jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)) for x in leaves]
        self.capacity = capacity
        self.int_dtype = int_dtype

    def _stored_dtype(self, spec) -> Any:
        if spec.dtype == jnp.bool_:
            return jnp.uint8
        if self.int_dtype is not None and jnp.issubdtype(spec.dtype, jnp.integer):
            return self.int_dtype
        return spec.dtype

    def _encode(self, x: jax.Array, spec) -> jax.Array:
        if spec.dtype == jnp.bool_:
            return _pack_bits(x)
        return x.astype(self._stored_dtype(spec))

    def _decode(self, stored: jax.Array, spec) -> jax.Array:
        """Inverse of `_encode` for a batch of stored rows `[N, ...]`."""
        if spec.dtype == jnp.bool_:
            size = int(np.prod(spec.shape, dtype=int))
            bits = jnp.unpackbits(stored, axis=-1, count=size).astype(jnp.bool_)
            return bits.reshape(stored.shape[:1] + spec.shape)
        return stored.astype(spec.dtype)

    def _stored_row(self, spec) -> jax.ShapeDtypeStruct:
        """Shape and dtype of one stored row of a leaf."""
        return jax.eval_shape(lambda: self._encode(jnp.zeros(spec.shape, spec.dtype), spec))

    def stored_bytes(self) -> int:
        """Bytes of storage per seed."""
        rows = [self._stored_row(spec) for spec in self.specs]
        row_bytes = sum(math.prod(r.shape) * jnp.dtype(r.dtype).itemsize for r in rows)
        return row_bytes * self.capacity

    def init(self) -> BufferState:
        storage = []
        for spec in self.specs:
            row = self._stored_row(spec)
            storage.append(jnp.zeros((self.capacity, *row.shape), row.dtype))
        return BufferState(
            storage=jax.tree_util.tree_unflatten(self.treedef, storage),
            position=jnp.zeros((), jnp.int32),
            size=jnp.zeros((), jnp.int32),
        )

    def add(self, buffer: BufferState, item: Any) -> BufferState:
        leaves = self.treedef.flatten_up_to(item)
        stored = self.treedef.flatten_up_to(buffer.storage)
        new = [
            column.at[buffer.position].set(self._encode(x, spec))
            for column, x, spec in zip(stored, leaves, self.specs, strict=True)
        ]
        return BufferState(
            storage=jax.tree_util.tree_unflatten(self.treedef, new),
            position=(buffer.position + 1) % self.capacity,
            size=jnp.minimum(buffer.size + 1, self.capacity),
        )

    def sample(self, buffer: BufferState, key: jax.Array, batch_size: int) -> Any:
        """`batch_size` items drawn uniformly with replacement from the written slots."""
        index = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
        stored = self.treedef.flatten_up_to(buffer.storage)
        leaves = [
            self._decode(column[index], spec)
            for column, spec in zip(stored, self.specs, strict=True)
        ]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def transition_buffer(obs_size: int, capacity: int) -> ReplayBuffer:
    """The buffer of real transitions used by ER, simple and latent agents."""
    example = Transition(
        obs=jax.ShapeDtypeStruct((obs_size,), jnp.bool_),
        action=jax.ShapeDtypeStruct((), jnp.int32),
        reward=jax.ShapeDtypeStruct((), jnp.float32),
        next_obs=jax.ShapeDtypeStruct((obs_size,), jnp.bool_),
        terminal=jax.ShapeDtypeStruct((), jnp.bool_),
    )
    return ReplayBuffer(example, capacity)


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
# Latent-space model (latent agent)
# --------------------------------------------------------------------------------------------

STD_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "softplus": jax.nn.softplus,
    "sigmoid": jax.nn.sigmoid,
    "sigmoid2": lambda x: 2.0 * jax.nn.sigmoid(x / 2.0),
}
MIN_SIGMA = 1e-6  # every learned std is clipped below at this value
LatentDist = dict[str, jax.Array]  # {'mu', 'sigma'} ([F] each) or {'probs', 'log_probs'} ([F, W])


class LatentConfig(NamedTuple):
    """Shape and parameterisation of the latent state (SPEC §4, latent heads)."""

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
