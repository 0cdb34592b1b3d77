"""Tests of the agent building blocks in agents.py (SPEC §4-8): networks, AdamW, the Q-learning
loss and step, and action selection (the replay buffer: `test_replay_buffer.py`). Expected
values are computed by hand or with numpy, never by the code under test."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import agents
import model_parts
import replay_buffer
from agents import MLPConfig

# --------------------------------------------------------------------------------------------
# Networks (SPEC §4)
# --------------------------------------------------------------------------------------------

NP_ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
}


def np_mlp(params, module, x, num_hidden_layers, activation):
    """numpy forward pass of `num_hidden_layers` x (Linear, activation) then a Linear head."""
    h = np.asarray(x, np.float64)
    for k in range(num_hidden_layers + 1):
        layer = params[f"{module}/linear" + ("" if k == 0 else f"_{k}")]
        h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if k < num_hidden_layers:
            h = NP_ACTIVATIONS[activation](h)
    return h


def test_q_network_parameter_tree_and_shapes():
    num_actions, obs_dim = 4, 7
    net = agents.q_network(num_actions, MLPConfig(3, 200, "elu"))
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((obs_dim,)))
    expected = {
        "q_function/linear": (obs_dim, 200),
        "q_function/linear_1": (200, 200),
        "q_function/linear_2": (200, 200),
        "q_function/linear_3": (200, num_actions),
    }
    assert set(params) == set(expected)
    for name in expected:
        assert set(params[name]) == {"w", "b"}
        assert params[name]["w"].dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(params[name]["b"]), 0.0)
    assert {k: params[k]["w"].shape for k in params} == expected
    assert {k: params[k]["b"].shape for k in params} == {k: (v[1],) for k, v in expected.items()}
    x = jax.random.normal(jax.random.PRNGKey(1), (5, obs_dim))
    out = net.apply(params, x)
    assert out.shape == (5, num_actions)
    expected_out = np_mlp(params, "q_function", x, 3, "elu")
    np.testing.assert_allclose(np.asarray(out), expected_out, rtol=1e-4, atol=1e-5)


def test_default_initialiser_is_truncated_normal_with_stddev_one_over_sqrt_fan_in():
    fan_in, obs_dim = 200, 7
    net = agents.q_network(4, MLPConfig(3, 200, "elu"))
    params = net.init(jax.random.PRNGKey(1), jnp.zeros((obs_dim,)))
    weights = {params[k]["w"].shape: np.asarray(params[k]["w"], np.float64) for k in params}
    w = weights[(200, 200)]  # a hidden-to-hidden layer, 40000 entries
    scale = 1.0 / np.sqrt(fan_in)
    # haiku's TruncatedNormal(stddev=s) is s * N(0,1) truncated to [-2, 2], whose standard
    # deviation is s * 0.8796 (haiku 0.0.17 does not rescale).
    truncated_unit_std = 0.87962566103423978
    assert abs(w.mean()) < 0.02 * scale
    assert abs(w.std() / (scale * truncated_unit_std) - 1.0) < 0.03
    assert np.abs(w).max() <= 2.0 * scale * (1 + 1e-5)
    assert np.abs(w).max() > 1.9 * scale  # truncated at 2 stddev, not at a smaller bound
    # Fan-in is the input width: the first layer (fan-in 7) has a larger scale.
    w0 = weights[(obs_dim, 200)]
    assert np.abs(w0).max() <= 2.0 / np.sqrt(obs_dim) * (1 + 1e-5)
    assert np.abs(w0).max() > 2.0 * scale * 1.5
    assert abs(w0.std() / (truncated_unit_std / np.sqrt(obs_dim)) - 1.0) < 0.1


def test_activations_match_numpy_and_differ():
    num_actions, obs_dim, layers = 3, 5, 2
    x = jax.random.normal(jax.random.PRNGKey(2), (6, obs_dim)) * 2.0
    a = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)
    inputs = np.concatenate([np.asarray(x), np.eye(num_actions)[np.asarray(a)]], axis=-1)
    # The parameter tree does not depend on the activation: share one set of params.
    params = model_parts.reward_network(num_actions, MLPConfig(layers, 8, "relu")).init(
        jax.random.PRNGKey(3), x[0], a[0]
    )
    outputs = {}
    for activation in ("relu", "silu", "elu"):
        net = model_parts.reward_network(num_actions, MLPConfig(layers, 8, activation))
        outputs[activation] = np.asarray(net.apply(params, x, a)["mu"], np.float64)
        expected = np_mlp(params, "reward_function", inputs, layers, activation)[:, 0]
        np.testing.assert_allclose(outputs[activation], expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(outputs["relu"], outputs["silu"], atol=1e-3)
    assert not np.allclose(outputs["relu"], outputs["elu"], atol=1e-3)
    assert not np.allclose(outputs["silu"], outputs["elu"], atol=1e-3)


def test_reward_and_termination_networks_take_one_hot_action_after_input():
    num_actions, obs_dim = 3, 5
    mlp = MLPConfig(1, 8, "silu")
    x = jax.random.bernoulli(jax.random.PRNGKey(4), 0.5, (6, obs_dim))  # bool observations
    a = jnp.array([0, 1, 2, 2, 1, 0], jnp.int32)
    x_np = np.asarray(x, np.float64)
    inputs = np.concatenate([x_np, np.eye(num_actions)[np.asarray(a)]], axis=-1)

    reward_net = model_parts.reward_network(num_actions, mlp)
    r_params = reward_net.init(jax.random.PRNGKey(5), x[0], a[0])
    assert set(r_params) == {"reward_function/linear", "reward_function/linear_1"}
    assert r_params["reward_function/linear"]["w"].shape == (obs_dim + num_actions, 8)
    assert r_params["reward_function/linear_1"]["w"].shape == (8, 1)
    r_out = reward_net.apply(r_params, x, a)
    assert set(r_out) == {"mu", "sigma"}
    assert r_out["mu"].shape == (6,)
    expected_mu = np_mlp(r_params, "reward_function", inputs, 1, "silu")[:, 0]
    np.testing.assert_allclose(np.asarray(r_out["mu"]), expected_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(r_out["sigma"]), np.ones(6))
    # One-hot first then observation would give different values.
    swapped = np.concatenate([np.eye(num_actions)[np.asarray(a)], x_np], axis=-1)
    assert not np.allclose(
        np_mlp(r_params, "reward_function", swapped, 1, "silu")[:, 0], expected_mu, atol=1e-4
    )
    # The action matters.
    mu_other = reward_net.apply(r_params, x, (a + 1) % num_actions)["mu"]
    assert not np.allclose(np.asarray(mu_other), expected_mu, atol=1e-4)

    term_net = model_parts.termination_network(num_actions, mlp)
    t_params = term_net.init(jax.random.PRNGKey(6), x[0], a[0])
    assert set(t_params) == {"termination_function/linear", "termination_function/linear_1"}
    t_out = term_net.apply(t_params, x, a)
    assert set(t_out) == {"logit"}
    assert t_out["logit"].shape == (6,)
    expected_logit = np_mlp(t_params, "termination_function", inputs, 1, "silu")[:, 0]
    np.testing.assert_allclose(np.asarray(t_out["logit"]), expected_logit, rtol=1e-5, atol=1e-6)
    # Unbatched call.
    single = term_net.apply(t_params, x[2], a[2])["logit"]
    assert single.shape == ()
    np.testing.assert_allclose(float(single), expected_logit[2], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Optimiser (SPEC §5)
# --------------------------------------------------------------------------------------------

ADAM = {"lr": 0.1, "b1": 0.9, "b2": 0.99, "eps": 1e-3, "wd": 0.05}
X0 = {"a": np.array([1.0, -2.0, 0.5]), "b": np.array([[3.0, -0.25]])}
GRADS = [
    {"a": np.array([0.5, 0.1, -2.0]), "b": np.array([[0.3, 0.0]])},
    {"a": np.array([-0.4, 0.2, 1.0]), "b": np.array([[0.3, 1.5]])},
]


def reference_adamw(x0, grads, lr, b1, b2, eps, wd):
    """`x <- x - lr * m_hat / (sqrt(v_hat) + eps) - wd * x`, in float64, one leaf at a time."""
    out = []
    for key in sorted(x0):
        x = x0[key].astype(np.float64)
        m = np.zeros_like(x)
        v = np.zeros_like(x)
        xs = []
        for t, g in enumerate(grads, start=1):
            g = g[key]
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            m_hat = m / (1 - b1**t)
            v_hat = v / (1 - b2**t)
            x = x - lr * m_hat / (np.sqrt(v_hat) + eps) - wd * x
            xs.append(x)
        out.append(xs)
    return [{k: out[i][t] for i, k in enumerate(sorted(x0))} for t in range(len(grads))]


def run_optax(opt, x0, grads):
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), x0)
    state = opt.init(params)
    history = []
    for g in grads:
        g = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), g)
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(jax.tree_util.tree_map(np.asarray, params))
    return history


def assert_trees_close(actual, expected, rtol=1e-5, atol=1e-6):
    assert set(actual) == set(expected)
    for k in expected:
        np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol)


def test_adamw_matches_formula_for_one_and_two_steps():
    h = ADAM
    expected = reference_adamw(X0, GRADS, h["lr"], h["b1"], h["b2"], h["eps"], h["wd"])
    got = run_optax(agents.adamw(h["lr"], h["b1"], h["b2"], h["eps"], h["wd"]), X0, GRADS)
    assert_trees_close(got[0], expected[0])
    assert_trees_close(got[1], expected[1])
    # Sanity of the reference: with eps small and g != 0 the first step moves each coordinate
    # by about lr (plus the decay).
    np.testing.assert_allclose(
        expected[0]["a"], X0["a"] - h["lr"] * np.sign(GRADS[0]["a"]) - h["wd"] * X0["a"], atol=1e-2
    )


def test_adamw_decay_is_not_scaled_by_step_size_unlike_optax_adamw():
    h = ADAM
    ours = run_optax(agents.adamw(h["lr"], h["b1"], h["b2"], h["eps"], h["wd"]), X0, GRADS[:1])[0]
    theirs = run_optax(
        optax.adamw(h["lr"], b1=h["b1"], b2=h["b2"], eps=h["eps"], weight_decay=h["wd"]),
        X0,
        GRADS[:1],
    )[0]
    # optax.adamw decays by lr * wd * x instead of wd * x.
    for k in X0:
        diff = ours[k] - theirs[k]
        np.testing.assert_allclose(diff, -(1 - h["lr"]) * h["wd"] * X0[k], rtol=1e-4, atol=1e-6)
    assert np.abs(ours["b"] - theirs["b"]).max() > 0.1


def test_optimizer_with_traced_hyperparameters_compiles_once():
    traces = []
    params = {k: jnp.asarray(v, jnp.float32) for k, v in X0.items()}
    grads = {k: jnp.asarray(v, jnp.float32) for k, v in GRADS[0].items()}
    opt_state = agents.init_optimizer(params)

    @jax.jit
    def step(params, opt_state, grads, hp):
        traces.append(1)
        updates, opt_state = agents.optimizer(hp, "alpha_adam").update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def hp(alpha):
        values = {
            "alpha_adam": alpha,
            "b1_adam": ADAM["b1"],
            "b2_adam": ADAM["b2"],
            "eps_adam": ADAM["eps"],
            "wd_adam": ADAM["wd"],
        }
        return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}

    results = {}
    for alpha in (0.1, 0.01):
        new_params, new_state = step(params, opt_state, grads, hp(alpha))
        results[alpha] = jax.tree_util.tree_map(np.asarray, new_params)
        expected = reference_adamw(
            X0, GRADS[:1], alpha, ADAM["b1"], ADAM["b2"], ADAM["eps"], ADAM["wd"]
        )[0]
        assert_trees_close(results[alpha], expected)
        # The state stays usable: a second step with the same traced function.
        step(new_params, new_state, grads, hp(alpha))
    assert len(traces) == 1
    assert not np.allclose(results[0.1]["a"], results[0.01]["a"])


# --------------------------------------------------------------------------------------------
# Q-learning loss and step (SPEC §8)
# --------------------------------------------------------------------------------------------

Q_TM1 = jnp.array([1.0, 2.0, 3.0])
Q_T_TARGET = jnp.array([4.0, 1.0, 2.0])  # argmax 0
Q_T_ONLINE = jnp.array([0.0, 5.0, 1.0])  # argmax 1
GAMMA = 0.9


def q_loss(r=0.5, c=1.0, w=1.0, a=1, double=False, q_tm1=Q_TM1, q_t_target=Q_T_TARGET):
    return agents.q_learning_loss(
        q_tm1,
        jnp.int32(a),
        jnp.float32(r),
        jnp.float32(c),
        q_t_target,
        Q_T_ONLINE,
        jnp.float32(w),
        jnp.float32(GAMMA),
        double,
    )


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # y = 0.5 + 0.9 * max(4, 1, 2) = 4.1; (2 - 4.1)^2
        ({}, 4.41),
        # y = 0.5 + 0.9 * Q_target[argmax Q_online = 1] = 1.4; (2 - 1.4)^2
        ({"double": True}, 0.36),
        # terminal: y = r
        ({"c": 0.0}, 2.25),
        ({"c": 0.0, "double": True}, 2.25),
        # model continuation probability: y = 0.5 + 0.9 * 0.5 * 4 = 2.3
        ({"c": 0.5}, 0.09),
        ({"w": 0.0}, 0.0),
        ({"w": 2.0}, 8.82),
        ({"w": 2.0, "double": True}, 0.72),
        # another action: (3 - 4.1)^2
        ({"a": 2}, 1.21),
        ({"r": -1.0, "a": 0}, (1.0 - (-1.0 + 3.6)) ** 2),
    ],
)
def test_q_learning_loss_hand_computed(kwargs, expected):
    np.testing.assert_allclose(float(q_loss(**kwargs)), expected, rtol=1e-5, atol=1e-6)


def test_q_learning_loss_gradients_no_half_and_no_gradient_into_target():
    for double in (False, True):
        grad_target = jax.grad(lambda qt, d=double: q_loss(q_t_target=qt, double=d))(Q_T_TARGET)
        np.testing.assert_array_equal(np.asarray(grad_target), 0.0)
    # d/dq (q - y)^2 = 2 (q - y) at the taken action only: 2 * (2 - 4.1) = -4.2 (not -2.1)
    grad_q = jax.grad(lambda q: q_loss(q_tm1=q))(Q_TM1)
    np.testing.assert_allclose(np.asarray(grad_q), [0.0, -4.2, 0.0], rtol=1e-5)
    grad_q_w2 = jax.grad(lambda q: q_loss(q_tm1=q, w=2.0))(Q_TM1)
    np.testing.assert_allclose(np.asarray(grad_q_w2), [0.0, -8.4, 0.0], rtol=1e-5)


def np_batch_q_loss(apply, online, target, batch, gamma, double):
    """Mean over the batch of w * (Q(s)[a] - y)^2; the network outputs come from haiku's
    `apply`, the target and the loss from numpy."""
    q_tm1 = np.asarray(apply(online, batch.obs), np.float64)
    q_t_target = np.asarray(apply(target, batch.next_obs), np.float64)
    if double:
        q_t_online = np.asarray(apply(online, batch.next_obs), np.float64)
        bootstrap = q_t_target[np.arange(len(q_t_target)), q_t_online.argmax(-1)]
    else:
        bootstrap = q_t_target.max(-1)
    c = np.asarray(batch.continuation, np.float64)
    y = np.asarray(batch.reward, np.float64) + gamma * c * bootstrap
    q_a = q_tm1[np.arange(len(q_tm1)), np.asarray(batch.action)]
    return float(np.mean(np.asarray(batch.weight, np.float64) * (q_a - y) ** 2))


@pytest.mark.parametrize("double_dqn", [False, True])
def test_q_learning_step_decreases_loss_and_keeps_target(double_dqn):
    num_actions, obs_dim, n = 3, 4, 8
    keys = jax.random.split(jax.random.PRNGKey(7), 6)
    q_net = agents.q_network(num_actions, MLPConfig(1, 16, "relu"))
    q_params = q_net.init(keys[0], jnp.zeros((obs_dim,)))
    q_target = q_net.init(keys[1], jnp.zeros((obs_dim,)))
    learner = agents.Learner(q_params, q_target, agents.init_optimizer(q_params))
    batch = agents.QBatch(
        obs=jax.random.normal(keys[2], (n, obs_dim)),
        action=jax.random.randint(keys[3], (n,), 0, num_actions),
        reward=jax.random.normal(keys[4], (n,)),
        next_obs=jax.random.normal(keys[5], (n, obs_dim)),
        continuation=jnp.array([1, 1, 0, 1, 0.5, 1, 1, 0], jnp.float32),
        weight=jnp.array([1, 1, 1, 0, 1, 1, 1, 1], jnp.float32),
    )
    hp = {
        "alpha_adam": 3e-3,
        "b1_adam": 0.9,
        "b2_adam": 0.999,
        "eps_adam": 1e-8,
        "wd_adam": 0.0,
        "gamma": GAMMA,
    }
    hp = {k: jnp.float32(v) for k, v in hp.items()}
    step = jax.jit(
        functools.partial(
            agents.q_learning_step, q_net, step_size_key="alpha_adam", double_dqn=double_dqn
        )
    )
    apply = jax.jit(q_net.apply)
    losses = [np_batch_q_loss(apply, learner.q_params, q_target, batch, GAMMA, double_dqn)]
    for _ in range(20):
        learner, diagnostics = step(learner, batch, hp)
        # the reported loss is the one before the step
        np.testing.assert_allclose(diagnostics["q_loss"], losses[-1], rtol=1e-4)
        losses.append(np_batch_q_loss(apply, learner.q_params, q_target, batch, GAMMA, double_dqn))
    assert losses[1] < losses[0]
    assert losses[-1] < 0.8 * losses[0]
    leaves = jax.tree_util.tree_leaves
    for new, old in zip(leaves(learner.q_target), leaves(q_target), strict=True):
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    for new, old in zip(leaves(learner.q_params), leaves(q_params), strict=True):
        assert not np.array_equal(np.asarray(new), np.asarray(old))


def test_to_q_batch_continuation_and_weights():
    transitions = replay_buffer.Transition(
        obs=jnp.zeros((3, 2), bool),
        action=jnp.array([0, 1, 2], jnp.int32),
        reward=jnp.array([0.0, 1.0, -1.0]),
        next_obs=jnp.ones((3, 2), bool),
        terminal=jnp.array([False, True, False]),
    )
    batch = agents.to_q_batch(transitions)
    np.testing.assert_array_equal(np.asarray(batch.continuation), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(np.asarray(batch.weight), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(batch.reward), [0.0, 1.0, -1.0])


# --------------------------------------------------------------------------------------------
# Action selection (SPEC §7)
# --------------------------------------------------------------------------------------------

N_DRAWS = 20000


def action_frequencies(q, strategy, hp, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), N_DRAWS)
    actions = jax.jit(jax.vmap(lambda k: agents.select_action(q, k, strategy, hp)))(keys)
    actions = np.asarray(actions)
    assert actions.shape == (N_DRAWS,)
    return np.bincount(actions, minlength=q.shape[0]) / N_DRAWS


def binomial_tolerance(p):
    return 5 * np.sqrt(p * (1 - p) / N_DRAWS) + 1e-4


def test_softmax_frequencies_match_softmax_of_q_over_temperature():
    q = jnp.array([1.0, 0.5, -0.3, 1.4])
    temp = 0.5
    freqs = action_frequencies(q, "softmax", {"softmax_temp": jnp.float32(temp)}, 5)
    logits = np.asarray(q, np.float64) / temp
    p = np.exp(logits - logits.max())
    p /= p.sum()
    np.testing.assert_array_less(np.abs(freqs - p), binomial_tolerance(p))
    # The temperature matters: softmax(q) itself is far outside the tolerance.
    p1 = np.exp(np.asarray(q, np.float64))
    p1 /= p1.sum()
    assert np.any(np.abs(freqs - p1) > 3 * binomial_tolerance(p1))


def test_epsilon_greedy_frequencies():
    q = jnp.array([0.1, -1.0, 2.0, 1.9])  # greedy action 2
    eps, num_actions = 0.3, 4
    freqs = action_frequencies(q, "epsilon_greedy", {"epsilon": jnp.float32(eps)}, 6)
    non_greedy = 1.0 - freqs[2]
    expected = eps * (num_actions - 1) / num_actions
    assert abs(non_greedy - expected) < binomial_tolerance(expected)
    p_each = eps / num_actions
    for a in (0, 1, 3):
        assert abs(freqs[a] - p_each) < binomial_tolerance(p_each)


def test_unknown_exploration_strategy_raises():
    with pytest.raises(ValueError, match="exploration_strat"):
        agents.select_action(
            jnp.zeros(3), jax.random.PRNGKey(0), "boltzmann", {"softmax_temp": jnp.float32(1.0)}
        )
