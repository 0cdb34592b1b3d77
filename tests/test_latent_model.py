"""The latent-model agent: latent heads, KLs, the model loss, rollouts, its shipped configs (its
CLI run and learning run: `test_cli.py`, `test_run.py`, over the registry).

Networks are tiny (1 hidden layer of 16 units, F = 3 features of width 4) and the few compiled
functions are module-level, so the file costs a handful of compilations.
"""

import json
import math
import os

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, definition, tiny_config

import agents
import environments
import latent_model
import model_parts
import replay_buffer
import train_latent_model_DQN as latent_dqn
from training import config

NUM_ACTIONS, OBS_SIZE = 3, 6
WEIGHTS = {
    "KL_posterior_weight": 0.2,
    "KL_prior_weight": 0.8,
    "posterior_entropy_weight": 0.3,
    "reward_weight": 0.5,
    "termination_weight": 2.0,
    "obs_prediction_weight": 0.7,
}


def latent_cfg(**overrides) -> dict:
    raw = tiny_config("categorical_latent", num_features=3, feature_width=4, **WEIGHTS, **overrides)
    return config.validate_config(raw, definition("categorical_latent"))


def init_model(cfg, seed=0):
    nets = latent_dqn.build_networks(cfg, NUM_ACTIONS, OBS_SIZE)
    size = latent_model.LatentConfig.from_config(cfg).size
    return nets, latent_dqn.init_model_params(nets, jax.random.PRNGKey(seed), size, OBS_SIZE)


def hand_built_batch() -> replay_buffer.Transition:
    rng = np.random.default_rng(0)
    return replay_buffer.Transition(
        obs=jnp.asarray(rng.random((3, OBS_SIZE)) < 0.5),
        action=jnp.array([0, 2, 1], jnp.int32),
        reward=jnp.array([-1.0, 0.5, 2.0], jnp.float32),
        next_obs=jnp.asarray(rng.random((3, OBS_SIZE)) < 0.5),
        terminal=jnp.array([False, True, False]),
    )


# ------------------------------------------------------------------------------------------
# KL divergences
# ------------------------------------------------------------------------------------------


def normal_log_pdf(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


def test_gaussian_kl_matches_numerical_integration():
    p1 = {"mu": np.array([0.3, -1.0, 2.0]), "sigma": np.array([0.5, 1.5, 1.0])}
    p2 = {"mu": np.array([-0.2, 0.5, 2.0]), "sigma": np.array([1.2, 0.7, 1.0])}
    x = np.linspace(-15.0, 15.0, 200001)
    expected = 0.0
    for mu1, s1, mu2, s2 in zip(p1["mu"], p1["sigma"], p2["mu"], p2["sigma"], strict=True):
        log1, log2 = normal_log_pdf(x, mu1, s1), normal_log_pdf(x, mu2, s2)
        expected += np.trapezoid(np.exp(log1) * (log1 - log2), x)
    as_jax = {k: jnp.asarray(v, jnp.float32) for k, v in p1.items()}
    got = latent_model.gaussian_kl(as_jax, {k: jnp.asarray(v, jnp.float32) for k, v in p2.items()})
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    assert abs(float(latent_model.gaussian_kl(as_jax, as_jax))) < 1e-6
    # the posterior-entropy term against the standard normal
    base = latent_model.base_distribution(
        latent_model.LatentConfig("gaussian", 3, None, "softplus", 0.0)
    )
    closed = np.sum(np.log(1 / p1["sigma"]) + (p1["sigma"] ** 2 + p1["mu"] ** 2) / 2 - 0.5)
    np.testing.assert_allclose(float(latent_model.gaussian_kl(as_jax, base)), closed, rtol=1e-5)


def test_categorical_kl_matches_direct_sum():
    rng = np.random.default_rng(1)
    logits1, logits2 = rng.normal(size=(2, 3, 4)) * 2.0
    p1 = np.exp(logits1) / np.exp(logits1).sum(-1, keepdims=True)
    p2 = np.exp(logits2) / np.exp(logits2).sum(-1, keepdims=True)
    expected = sum(p1[f, w] * math.log(p1[f, w] / p2[f, w]) for f in range(3) for w in range(4))

    def dist(logits):
        logits = jnp.asarray(logits, jnp.float32)
        return {"probs": jax.nn.softmax(logits), "log_probs": jax.nn.log_softmax(logits)}

    got = latent_model.categorical_kl(dist(logits1), dist(logits2))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    assert float(latent_model.categorical_kl(dist(logits2), dist(logits1))) > 0
    # KL to the uniform base is log W minus the entropy
    base = latent_model.base_distribution(
        latent_model.LatentConfig("categorical", 3, 4, "softplus", 0.0)
    )
    entropy = -np.sum(p1 * np.log(p1))
    np.testing.assert_allclose(
        float(latent_model.categorical_kl(dist(logits1), base)),
        3 * math.log(4) - entropy,
        rtol=1e-5,
    )


def test_kl_balance_stop_gradients_on_distributions():
    posterior = {"mu": jnp.array([0.1, -0.3]), "sigma": jnp.array([0.8, 1.3])}
    prior = {"mu": jnp.array([0.5, 0.2]), "sigma": jnp.array([1.1, 0.6])}

    def term(index, wrt):
        def f(d):
            q, p = (d, prior) if wrt == "posterior" else (posterior, d)
            return latent_model.kl_balance(q, p, "gaussian")[index]

        grads = jax.grad(f)(posterior if wrt == "posterior" else prior)
        return max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads))

    assert term(0, "posterior") > 0 and term(0, "prior") == 0  # KL(q' || sg(p'))
    assert term(1, "posterior") == 0 and term(1, "prior") > 0  # KL(sg(q') || p')


# ------------------------------------------------------------------------------------------
# Latent heads and networks
# ------------------------------------------------------------------------------------------


def test_straight_through_sample_is_one_hot_with_softmax_gradient():
    latent = latent_model.LatentConfig("categorical", 3, 4, "softplus", 0.0)
    net = hk.without_apply_rng(
        hk.transform(lambda x, key: latent_model.latent_head(x, latent, key, min_std=0.0))
    )
    x, key = jnp.arange(5.0) / 5.0, jax.random.PRNGKey(0)
    params = net.init(jax.random.PRNGKey(1), x, key)
    sample, dist = net.apply(params, x, key)
    rows = np.asarray(sample).reshape(3, 4)
    assert sample.shape == (12,)
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-6)
    assert set(np.round(rows, 6).ravel()) <= {0.0, 1.0}
    np.testing.assert_allclose(np.asarray(dist["probs"]).sum(-1), 1.0, atol=1e-6)

    c = jax.random.normal(jax.random.PRNGKey(2), (12,))
    grad_sample = jax.grad(lambda p: jnp.sum(c * net.apply(p, x, key)[0]))(params)
    grad_probs = jax.grad(lambda p: jnp.sum(c * net.apply(p, x, key)[1]["probs"].ravel()))(params)
    for a, b in zip(
        jax.tree_util.tree_leaves(grad_sample), jax.tree_util.tree_leaves(grad_probs), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_one_hot_sample_is_the_straight_through_sample_as_positions():
    latent = latent_model.LatentConfig("categorical", 3, 4, "softplus", 0.0)
    net = hk.without_apply_rng(
        hk.transform(lambda x, key, one_hot: latent_model.latent_head(x, latent, key, 0.0, one_hot))
    )
    x = jnp.arange(5.0) / 5.0
    params = net.init(jax.random.PRNGKey(1), x, jax.random.PRNGKey(0), False)
    for seed in range(20):
        key = jax.random.PRNGKey(seed)
        dense, dist = net.apply(params, x, key, False)
        positions, same_dist = net.apply(params, x, key, True)
        assert isinstance(positions, agents.OneHot) and positions.size == 12
        # one 1 per feature, inside that feature's block of W = 4
        np.testing.assert_array_equal(np.asarray(positions.index) // 4, [0, 1, 2])
        np.testing.assert_allclose(positions.dense(), dense, atol=1e-6)
        np.testing.assert_array_equal(same_dist["probs"], dist["probs"])


def test_one_hot_input_gives_the_dense_values_and_weight_gradients():
    """A network reading a `OneHot` (after the action is appended, as the model heads do)
    computes what it computes on the dense 0/1 vector, and so do the weight gradients."""
    mlp = agents.MLPConfig(2, 16, "elu")
    net = model_parts.reward_network(NUM_ACTIONS, mlp)
    size, k, batch = 12, 3, 7
    index = jax.random.randint(jax.random.PRNGKey(0), (batch, k), 0, 4) + jnp.arange(k) * 4
    x = agents.OneHot(index, size)
    action = jax.random.randint(jax.random.PRNGKey(1), (batch,), 0, NUM_ACTIONS)
    params = net.init(jax.random.PRNGKey(2), jnp.zeros((batch, size)), action)
    assert set(params) == {f"reward_function/linear{s}" for s in ("", "_1", "_2")}

    def loss(params, x):
        return jnp.sum(jnp.sin(net.apply(params, x, action)["mu"]))

    np.testing.assert_allclose(
        net.apply(params, x, action)["mu"], net.apply(params, x.dense(), action)["mu"], rtol=1e-5
    )
    sparse_grad, dense_grad = jax.grad(loss)(params, x), jax.grad(loss)(params, x.dense())
    for a, b in zip(jax.tree.leaves(sparse_grad), jax.tree.leaves(dense_grad), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("latent_type", ["gaussian", "tanh_gaussian", "categorical"])
def test_module_names_and_shapes(latent_type):
    cfg = latent_cfg(latent_type=latent_type, min_std=0.1)
    _, params = init_model(cfg)
    assert set(params) == {"reward", "termination", "phi", "next_phi", "obs"}
    width = 12 if latent_type == "categorical" else 3
    heads = ["linear_1"] if latent_type == "categorical" else ["linear_1", "linear_2"]
    for name, net in [("phi", "phi_function"), ("next_phi", "next_phi_function")]:
        assert set(params[name]) == {f"{net}/linear"} | {f"{net}/{h}" for h in heads}
        for head in heads:  # mean head, then std head
            assert params[name][f"{net}/{head}"]["w"].shape == (16, width)
    assert params["phi"]["phi_function/linear"]["w"].shape == (OBS_SIZE, 16)
    assert params["next_phi"]["next_phi_function/linear"]["w"].shape == (width + NUM_ACTIONS, 16)
    assert set(params["obs"]) == {"obs_function/linear", "obs_function/linear_1"}
    assert params["obs"]["obs_function/linear"]["w"].shape == (width, 16)
    assert params["reward"]["reward_function/linear"]["w"].shape == (width + NUM_ACTIONS, 16)


def test_gaussian_encoder_std_and_decoder_variance():
    cfg = latent_cfg(latent_type="gaussian", min_std=0.1, std_act="sigmoid2")
    nets, params = init_model(cfg)
    obs = jnp.ones(OBS_SIZE)
    _, enc = nets.phi.apply(params["phi"], obs, jax.random.PRNGKey(0))
    raw = np_head(params["phi"], "phi_function", np_mlp(params["phi"], "phi_function", obs, 1), 2)
    sigmoid2 = 2 / (1 + np.exp(-raw / 2))
    np.testing.assert_allclose(enc["sigma"], sigmoid2 + 0.1, rtol=1e-5)  # min_std added
    phi_a = np.concatenate([np.asarray(enc["mu"]), np.eye(NUM_ACTIONS)[1]])
    _, trans = nets.next_phi.apply(params["next_phi"], enc["mu"], 1, jax.random.PRNGKey(0))
    h = np_mlp(params["next_phi"], "next_phi_function", phi_a, 1)
    raw = np_head(params["next_phi"], "next_phi_function", h, 2)
    np.testing.assert_allclose(trans["sigma"], 2 / (1 + np.exp(-raw / 2)), rtol=1e-5)  # no min_std
    gauss = latent_cfg(latent_type="gaussian", binary_obs=False, learn_obs_variance=True)
    nets, params = init_model(gauss)
    dist = nets.obs.apply(params["obs"], jnp.zeros(3))
    assert set(dist) == {"mu", "sigma"} and dist["sigma"].shape == (OBS_SIZE,)
    assert set(params["obs"]) == {
        "obs_function/linear",
        "obs_function/linear_1",
        "obs_function/linear_2",
    }
    fixed = latent_cfg(latent_type="gaussian", binary_obs=False)
    nets, params = init_model(fixed)
    np.testing.assert_array_equal(nets.obs.apply(params["obs"], jnp.zeros(3))["sigma"], 1.0)


# ------------------------------------------------------------------------------------------
# The model loss
# ------------------------------------------------------------------------------------------


def np_mlp(params, name, x, num_layers):
    """Numpy forward pass: torso layers `linear`..`linear_{n-1}` with elu; returns the torso."""
    for i in range(num_layers):
        layer = params[f"{name}/linear" + (f"_{i}" if i else "")]
        x = x @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        x = np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
    return x


def np_head(params, name, h, index):
    layer = params[f"{name}/linear_{index}"]
    return h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)


def np_latent(params, name, x, latent_type, key, min_std):
    """(sample, dist) of the encoder or transition, numpy, with the noise of `key`."""
    h = np_mlp(params, name, x, 1)
    if latent_type == "categorical":
        logits = np_head(params, name, h, 1).reshape(3, 4)
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        probs = np.exp(log_probs)
        u = np.asarray(jax.random.uniform(key, (3, 1)), np.float64)  # inverse-CDF draw
        sample = np.eye(4)[np.minimum((np.cumsum(probs, -1) < u).sum(-1), 3)].ravel()
        return sample, {"probs": probs, "log_probs": log_probs}
    mu = np_head(params, name, h, 1)
    sigma = np.maximum(np.logaddexp(0, np_head(params, name, h, 2)), 1e-6) + min_std
    sample = mu + sigma * np.asarray(jax.random.normal(key, (3,)), np.float64)
    return np.tanh(sample) if latent_type == "tanh_gaussian" else sample, {"mu": mu, "sigma": sigma}


def np_kl(p1, p2):
    if "probs" in p1:
        return np.sum(p1["probs"] * (p1["log_probs"] - p2["log_probs"]))
    s1, s2 = p1["sigma"], p2["sigma"]
    return np.sum(np.log(s2 / s1) + (s1**2 + (p1["mu"] - p2["mu"]) ** 2) / (2 * s2**2) - 0.5)


def np_model_loss(params, batch, key, latent_type, reconstruct_terminal_obs):
    """SPEC §8's latent model loss, written out in numpy."""
    base = (
        {"probs": np.full((3, 4), 0.25), "log_probs": np.full((3, 4), np.log(0.25))}
        if latent_type == "categorical"
        else {"mu": np.zeros(3), "sigma": np.ones(3)}
    )
    total = []
    for i, k in enumerate(jax.random.split(key, 3)):
        phi_key, next_key, prior_key = jax.random.split(k, 3)
        obs = np.asarray(batch.obs[i], np.float64)
        next_obs = np.asarray(batch.next_obs[i], np.float64)
        action = np.eye(NUM_ACTIONS)[int(batch.action[i])]
        terminal = bool(batch.terminal[i])
        phi, q = np_latent(params["phi"], "phi_function", obs, latent_type, phi_key, 0.0)
        _, q_next = np_latent(params["phi"], "phi_function", next_obs, latent_type, next_key, 0.0)
        phi_a = np.concatenate([phi, action])
        _, p_next = np_latent(
            params["next_phi"], "next_phi_function", phi_a, latent_type, prior_key, 0.0
        )
        logit = np_head(
            params["obs"], "obs_function", np_mlp(params["obs"], "obs_function", phi, 1), 1
        )
        sig = 1 / (1 + np.exp(-logit))
        reconstruction = -np.sum(obs * np.log(sig) + (1 - obs) * np.log(1 - sig))
        if terminal and not reconstruct_terminal_obs:
            reconstruction = 0.0
        mu_r = np_head(
            params["reward"],
            "reward_function",
            np_mlp(params["reward"], "reward_function", phi_a, 1),
            1,
        )[0]
        reward = 0.5 * np.log(2 * np.pi) + 0.5 * (float(batch.reward[i]) - mu_r) ** 2
        cont_logit = np_head(
            params["termination"],
            "termination_function",
            np_mlp(params["termination"], "termination_function", phi_a, 1),
            1,
        )[0]
        p_continue = 1 / (1 + np.exp(-cont_logit))
        termination = -np.log(1 - p_continue if terminal else p_continue)
        kl = np_kl(q_next, p_next)
        total.append(
            WEIGHTS["KL_posterior_weight"] * kl
            + WEIGHTS["KL_prior_weight"] * kl
            + WEIGHTS["posterior_entropy_weight"] * np_kl(q, base)
            + WEIGHTS["reward_weight"] * reward
            + WEIGHTS["termination_weight"] * termination
            + WEIGHTS["obs_prediction_weight"] * reconstruction
        )
    return np.mean(total)


@pytest.mark.parametrize(
    "latent_type, reconstruct_terminal_obs",
    [("gaussian", False), ("categorical", False), ("tanh_gaussian", True)],
)
def test_model_loss_on_hand_built_batch_matches_numpy(latent_type, reconstruct_terminal_obs):
    cfg = latent_cfg(latent_type=latent_type, reconstruct_terminal_obs=reconstruct_terminal_obs)
    nets, params = init_model(cfg, seed=3)
    batch, key = hand_built_batch(), jax.random.PRNGKey(7)
    hp = config.traced_hyperparameters(cfg)
    loss, terms = latent_dqn.model_loss(nets, cfg, params, batch, key, hp)
    expected = np_model_loss(params, batch, key, latent_type, reconstruct_terminal_obs)
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    assert set(terms) == set(latent_dqn.LOSS_WEIGHTS)
    np.testing.assert_allclose(terms["kl_posterior"], terms["kl_prior"], rtol=1e-6)  # same value


def test_q6_reconstruction_is_masked_on_terminal_transitions_only():
    batch, key = hand_built_batch(), jax.random.PRNGKey(7)
    per_transition = {}
    for flag in (False, True):
        cfg = latent_cfg(latent_type="gaussian", reconstruct_terminal_obs=flag)
        nets, params = init_model(cfg, seed=3)
        keys = jax.random.split(key, 3)
        per_transition[flag] = jax.vmap(
            lambda t, k: latent_dqn.model_loss_terms(nets, cfg, params, t, k)  # noqa: B023
        )(batch, keys)["reconstruction"]
    np.testing.assert_array_equal(per_transition[False][1], 0.0)  # the terminal transition
    assert float(per_transition[True][1]) > 0
    np.testing.assert_allclose(per_transition[False][::2], per_transition[True][::2])


@pytest.mark.parametrize("latent_type", ["gaussian", "categorical"])
def test_kl_terms_train_their_own_network(latent_type):
    """KL(q' || sg(p')) reaches the encoder and not the transition network; KL(sg(q') || p')
    reaches the transition network (and the encoder only through the sampled input phi)."""
    cfg = latent_cfg(latent_type=latent_type)
    nets, params = init_model(cfg, seed=4)
    transition = jax.tree_util.tree_map(lambda x: x[0], hand_built_batch())

    def grad_norms(term):
        grads = jax.grad(
            lambda p: latent_dqn.model_loss_terms(nets, cfg, p, transition, jax.random.PRNGKey(1))[
                term
            ]
        )(params)
        return {
            name: sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree_util.tree_leaves(tree))
            for name, tree in grads.items()
        }

    posterior = grad_norms("kl_posterior")
    assert posterior["phi"] > 0 and posterior["next_phi"] == 0
    prior = grad_norms("kl_prior")
    assert prior["next_phi"] > 0
    for name in ("obs", "reward", "termination"):
        assert posterior[name] == 0 and prior[name] == 0
    # the other terms never reach the transition network
    for term in ("reward", "termination", "reconstruction", "posterior_entropy"):
        assert grad_norms(term)["next_phi"] == 0


def test_model_loss_falls_on_a_fixed_batch():
    cfg = latent_cfg(latent_type="categorical", model_alpha=3e-3)
    nets, params = init_model(cfg, seed=5)
    hp = config.traced_hyperparameters(cfg)
    rng = np.random.default_rng(2)
    batch = replay_buffer.Transition(
        obs=jnp.asarray(rng.random((8, OBS_SIZE)) < 0.5),
        action=jnp.asarray(rng.integers(0, NUM_ACTIONS, 8), jnp.int32),
        reward=jnp.asarray(rng.normal(size=8), jnp.float32),
        next_obs=jnp.asarray(rng.random((8, OBS_SIZE)) < 0.5),
        terminal=jnp.asarray(rng.random(8) < 0.3),
    )

    @jax.jit
    def steps(params, opt, key):
        def one(carry, _):
            params, opt = carry
            params, opt, loss, _ = agents.gradient_step(
                lambda p: latent_dqn.model_loss(nets, cfg, p, batch, key, hp),
                params,
                opt,
                hp,
                "model_alpha",
            )
            return (params, opt), loss

        return jax.lax.scan(one, (params, opt), None, length=150)[1]

    losses = np.asarray(steps(params, agents.init_optimizer(params), jax.random.PRNGKey(0)))
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.5 * losses[:10].mean(), losses[[0, 50, 100, -1]]


# ------------------------------------------------------------------------------------------
# Acting and rollouts
# ------------------------------------------------------------------------------------------


def make_learner(cfg, seed=0):
    nets, model_params = init_model(cfg, seed)
    q_params = nets.q.init(
        jax.random.PRNGKey(seed + 1), jnp.zeros(latent_model.LatentConfig.from_config(cfg).size)
    )
    opt = agents.init_optimizer
    return nets, agents.Learner(q_params, q_params, opt(q_params), model_params, opt(model_params))


@pytest.mark.parametrize(
    "episodic, fixed", [(True, False), (False, False), (False, True)], ids=["episodic", "Q7", "c=1"]
)
def test_rollout_weights_and_continuations(episodic, fixed):
    cfg = latent_cfg(
        latent_type="gaussian", episodic_env=episodic, fixed_continuation_if_continuing=fixed
    )
    nets, learner = make_learner(cfg)
    hp = config.traced_hyperparameters(cfg)
    start = jnp.asarray(np.random.default_rng(3).random((5, OBS_SIZE)) < 0.5)
    out = latent_dqn.rollout(nets, cfg, learner, start, jax.random.PRNGKey(0), hp)
    B, L = 5, cfg["rollout_length"]
    assert out.obs.shape == (B * L, 3) and out.weight.shape == (B * L,)
    obs, next_obs = out.obs.reshape(B, L, 3), out.next_obs.reshape(B, L, 3)
    np.testing.assert_array_equal(obs[:, 1:], next_obs[:, :-1])  # one chain per start
    c, w = out.continuation.reshape(B, L), out.weight.reshape(B, L)
    if fixed:
        np.testing.assert_array_equal(c, 1.0)
    else:
        assert np.all((c > 0) & (c < 1))
    if episodic:
        np.testing.assert_array_equal(w[:, 0], 1.0)
        np.testing.assert_allclose(w[:, 1:], np.cumprod(c[:, :-1], axis=1), rtol=1e-6)
    else:
        np.testing.assert_array_equal(w, 1.0)
    mu = jax.vmap(lambda x, a: nets.reward.apply(learner.model_params["reward"], x, a)["mu"])(
        out.obs, out.action
    )
    np.testing.assert_allclose(out.reward, mu, rtol=1e-6)


def test_q_values_act_on_a_sampled_encoding():
    cfg = latent_cfg(latent_type="gaussian")
    env = environments.make_environment("OpenGrid", {"grid_size": 3})
    agent = latent_dqn.build_agent(cfg, env)
    learner, _ = agent.init(jax.random.PRNGKey(0))
    obs = env.reset(jax.random.PRNGKey(1))[1]
    k1, k2 = jax.random.PRNGKey(2), jax.random.PRNGKey(3)
    nets = latent_dqn.build_networks(cfg, env.num_actions(), 9)
    phi, _ = nets.phi.apply(learner.model_params["phi"], obs, k1)
    np.testing.assert_allclose(
        agent.q_values(learner, obs, k1), nets.q.apply(learner.q_params, phi), rtol=1e-6
    )
    assert not np.allclose(agent.q_values(learner, obs, k1), agent.q_values(learner, obs, k2))


# ------------------------------------------------------------------------------------------
# Shipped configs
# ------------------------------------------------------------------------------------------


def shipped(name: str) -> dict:
    with open(os.path.join(ROOT, "configs", f"{name}_latent_model.json")) as f:
        return json.load(f)


def test_shipped_configs_have_the_spec_values():
    with open(os.path.join(ROOT, "configs", "ER.json")) as f:
        er = json.load(f)
    categorical, gaussian = shipped("categorical"), shipped("gaussian")
    common = {k: v for k, v in er.items() if k not in ("alpha_adam", "softmax_temp", "batch_size")}
    assert common.items() <= categorical.items() and common.items() <= gaussian.items()
    assert categorical == {
        **common,
        "Q_alpha": 2e-4,
        "model_alpha": 2e-4,
        "softmax_temp": 1.6,
        "batch_size": 32,
        "rollout_length": 10,
        "KL_prior_weight": 0.8,
        "KL_posterior_weight": 0.2,
        "posterior_entropy_weight": 0,
        "reward_weight": 1,
        "termination_weight": 1,
        "obs_prediction_weight": 1,
        "latent_type": "categorical",
        "num_features": 32,
        "feature_width": 32,
        "binary_obs": True,
    }
    assert gaussian == categorical | {
        "Q_alpha": 3.125e-6,
        "softmax_temp": 12.8,
        "latent_type": "gaussian",
        "min_std": 0.1,
        "std_act": "sigmoid2",
    }


def test_sample_categorical_matches_the_probabilities():
    probs = jnp.array([[0.5, 0.0, 0.3, 0.2], [0.05, 0.05, 0.0, 0.9]])
    n = 40_000
    draws = jax.jit(jax.vmap(lambda k: latent_model.sample_categorical(k, probs)))(
        jax.random.split(jax.random.PRNGKey(0), n)
    )
    draws = np.asarray(draws)
    for row in range(2):
        counts = np.bincount(draws[:, row], minlength=4)
        expected = n * np.asarray(probs[row])
        tolerance = 5 * np.sqrt(n * np.asarray(probs[row]) * (1 - np.asarray(probs[row]))) + 1
        assert np.all(np.abs(counts - expected) <= tolerance), (row, counts, expected)
        assert counts[np.asarray(probs[row]) == 0].sum() == 0  # impossible categories never drawn
