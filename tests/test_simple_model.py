"""The simple-model agent: its model loss, its rollouts in the learned model (quirks Q2 and Q7),
and that the model learns (its CLI run and learning run: `test_cli.py`, `test_run.py`, over
the registry)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import definition, tiny_config

import agents
import environments
import model_parts
import replay_buffer
import train_simple_model_DQN as sm
from training import config

REWARD_MEAN, CONTINUE_LOGIT = 0.5, 0.3


def make_cfg(**overrides) -> dict:
    """A validated tiny config on a 2-pipe PanFlute: 3 observation bits, 2 actions."""
    raw = tiny_config(
        "simple_model",
        environment="PanFlute",
        env_config={"num_pipes": 2},
        episodic_env=False,
    )
    return config.validate_config({**raw, **overrides}, definition("simple_model"))


def make_model(cfg):
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    return env, sm.model_networks(cfg, env)


def constant_params(model, obs_size: int, obs_head) -> dict:
    """Model parameters whose outputs do not depend on the input: every weight is 0, so each
    head outputs its bias (reward mean, continuation logit, next-obs logits or means)."""
    params = sm.init_model(model, jax.random.PRNGKey(0), obs_size)
    params = jax.tree.map(jnp.zeros_like, params)
    params["reward"]["reward_function/linear_1"]["b"] = jnp.array([REWARD_MEAN])
    params["termination"]["termination_function/linear_1"]["b"] = jnp.array([CONTINUE_LOGIT])
    params["next_obs"]["next_obs_function/linear_1"]["b"] = jnp.asarray(obs_head, jnp.float32)
    return params


def log1p_exp(x):
    return math.log(1.0 + math.exp(x))


# --------------------------------------------------------------------------------------------
# The model loss
# --------------------------------------------------------------------------------------------

BATCH = replay_buffer.Transition(
    obs=jnp.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]], jnp.bool_),
    action=jnp.array([0, 1, 1], jnp.int32),
    reward=jnp.array([1.0, 0.0, -1.0]),
    next_obs=jnp.array([[0, 1, 0], [1, 0, 1], [1, 1, 1]], jnp.bool_),
    terminal=jnp.array([False, True, False]),
)
OBS_HEAD = [-1.0, 0.0, 2.0]
WEIGHTS = {"reward_weight": 2.0, "termination_weight": 3.0, "obs_prediction_weight": 0.5}


def expected_terms(binary_obs: bool) -> dict:
    """The three loss terms of BATCH, by hand: mean over the batch, obs term 0 when terminal."""
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    rewards, terminals = [1.0, 0.0, -1.0], [False, True, False]
    next_obs = [[0, 1, 0], [1, 0, 1], [1, 1, 1]]
    reward = [half_log_2pi + 0.5 * (r - REWARD_MEAN) ** 2 for r in rewards]
    # -log sigmoid(l) = log(1 + e^-l); -log(1 - sigmoid(l)) = log(1 + e^l)
    termination = [log1p_exp(CONTINUE_LOGIT if t else -CONTINUE_LOGIT) for t in terminals]
    obs = []
    for bits, terminal in zip(next_obs, terminals, strict=True):
        if binary_obs:
            row = sum(log1p_exp(-l if x else l) for x, l in zip(bits, OBS_HEAD, strict=True))
        else:
            row = sum(
                half_log_2pi + 0.5 * (x - m) ** 2 for x, m in zip(bits, OBS_HEAD, strict=True)
            )
        obs.append(0.0 if terminal else row)
    return {
        name: sum(v) / 3
        for name, v in [("reward", reward), ("termination", termination), ("obs", obs)]
    }


@pytest.mark.parametrize("binary_obs", [True, False])
def test_model_loss_matches_a_hand_computed_batch(binary_obs):
    cfg = make_cfg(binary_obs=binary_obs, **WEIGHTS)
    env, model = make_model(cfg)
    params = constant_params(model, env.observation_size, OBS_HEAD)
    hp = config.traced_hyperparameters(cfg)
    loss, terms = sm.model_loss(model, params, BATCH, jax.random.PRNGKey(0), hp)
    expected = expected_terms(binary_obs)
    for name in ("reward", "termination", "obs"):
        np.testing.assert_allclose(terms[name], expected[name], rtol=1e-5, err_msg=name)
    weighted = (
        WEIGHTS["reward_weight"] * expected["reward"]
        + WEIGHTS["termination_weight"] * expected["termination"]
        + WEIGHTS["obs_prediction_weight"] * expected["obs"]
    )
    np.testing.assert_allclose(loss, weighted, rtol=1e-5)


def test_bernoulli_terms_stay_finite_for_confident_logits():
    logit = jnp.array([-100.0, -100.0, 100.0, 100.0])
    bits = jnp.array([0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(model_parts.bernoulli_nll(bits, logit), [0.0, 100.0, 100.0, 0.0])


def test_observation_term_is_masked_on_terminal_transitions():
    cfg = make_cfg()
    env, model = make_model(cfg)
    params = constant_params(model, env.observation_size, OBS_HEAD)
    row = jax.tree.map(lambda x: x[1], BATCH)  # the terminal transition
    terms = sm.model_loss_terms(model, params, row, jax.random.PRNGKey(0))
    assert terms["obs"] == 0.0
    terms = sm.model_loss_terms(
        model, params, row._replace(terminal=jnp.bool_(False)), jax.random.PRNGKey(0)
    )
    assert terms["obs"] > 1.0


# --------------------------------------------------------------------------------------------
# Rollouts in the model
# --------------------------------------------------------------------------------------------


def uniform_act(obs, key):
    return jax.random.randint(key, (), 0, 2)


@pytest.mark.parametrize(
    "episodic, fixed, expected_w, expected_c",
    [
        (True, False, "powers", "sigmoid"),  # w <- w * c_prev
        (False, False, "ones", "sigmoid"),  # Q7 (default): the learned c still scales gamma
        (False, True, "ones", "ones"),  # Q7 switched off: c = 1 in a continuing environment
    ],
)
def test_rollout_weights_continuations_and_shapes(episodic, fixed, expected_w, expected_c):
    cfg = make_cfg(episodic_env=episodic, fixed_continuation_if_continuing=fixed)
    env, model = make_model(cfg)
    params = constant_params(model, env.observation_size, OBS_HEAD)
    B, L, d = 3, cfg["rollout_length"], env.observation_size
    starts = BATCH.obs
    batch = jax.jit(
        jax.vmap(lambda obs, key: sm.rollout(model, params, uniform_act, obs, key, cfg))
    )(starts, jax.random.split(jax.random.PRNGKey(0), B))

    assert batch.obs.shape == batch.next_obs.shape == (B, L, d)
    for field in (batch.action, batch.reward, batch.continuation, batch.weight):
        assert field.shape == (B, L)
    c = 1.0 / (1.0 + math.exp(-CONTINUE_LOGIT))
    want_c = np.full((B, L), c if expected_c == "sigmoid" else 1.0)
    want_w = np.tile(c ** np.arange(L) if expected_w == "powers" else np.ones(L), (B, 1))
    np.testing.assert_allclose(batch.continuation, want_c, rtol=1e-6)
    np.testing.assert_allclose(batch.weight, want_w, rtol=1e-5)
    np.testing.assert_allclose(batch.reward, REWARD_MEAN)
    # The rollout starts from the real observations and then chains its own predictions; with
    # logits (-1, 0, 2) the reference's sampling (Q2) is deterministic: bits 0, 0, 1.
    np.testing.assert_array_equal(batch.obs[:, 0], starts)
    np.testing.assert_array_equal(batch.obs[:, 1:], batch.next_obs[:, :-1])
    np.testing.assert_array_equal(batch.next_obs, np.broadcast_to([0.0, 0.0, 1.0], (B, L, d)))


Q2_LOGITS = np.array([-0.5, 0.0, 0.3, 0.7, 1.0, 2.0], np.float32)


@pytest.mark.parametrize("from_sigmoid", [False, True])
def test_next_observation_bits_fire_with_the_documented_probability(from_sigmoid):
    cfg = make_cfg(env_config={"num_pipes": 3}, sample_obs_from_sigmoid=from_sigmoid)
    env, model = make_model(cfg)
    params = constant_params(model, env.observation_size, Q2_LOGITS)["next_obs"]
    n = 20000
    sample = jax.jit(
        jax.vmap(lambda key: model.next_obs.apply(params, jnp.zeros(6), jnp.int32(0), key)[0])
    )
    frequency = np.asarray(sample(jax.random.split(jax.random.PRNGKey(0), n))).mean(axis=0)
    if from_sigmoid:
        probability = 1.0 / (1.0 + np.exp(-Q2_LOGITS))
    else:  # Q2: the raw logit is the probability, clipped to [0, 1] by the comparison
        probability = np.clip(Q2_LOGITS, 0.0, 1.0)
    # 5 standard errors of a frequency over n draws (at least 0.5/n for p in {0, 1})
    tolerance = 5 * np.sqrt(probability * (1 - probability) / n) + 0.5 / n
    assert np.all(np.abs(frequency - probability) <= tolerance), (frequency, probability)


def test_gaussian_next_observation_has_unit_variance_around_the_mean():
    cfg = make_cfg(binary_obs=False)
    env, model = make_model(cfg)
    params = constant_params(model, env.observation_size, OBS_HEAD)["next_obs"]
    sample = jax.vmap(lambda key: model.next_obs.apply(params, jnp.zeros(3), jnp.int32(0), key))
    samples, dist = sample(jax.random.split(jax.random.PRNGKey(0), 20000))
    np.testing.assert_allclose(dist["sigma"], 1.0)
    np.testing.assert_allclose(samples.mean(axis=0), OBS_HEAD, atol=0.05)
    np.testing.assert_allclose(samples.std(axis=0), 1.0, atol=0.05)


# --------------------------------------------------------------------------------------------
# Learning the model, and one update
# --------------------------------------------------------------------------------------------


def panflute_transitions(env, key, n: int) -> replay_buffer.Transition:
    """`n` consecutive real transitions of a random policy."""
    reset_key, key = jax.random.split(key)
    state, obs = env.reset(reset_key)

    def step(carry, key):
        state, obs = carry
        action_key, env_key = jax.random.split(key)
        action = jax.random.randint(action_key, (), 0, env.num_actions())
        state, next_obs, reward, terminal, _ = env.step(env_key, state, action)
        return (state, next_obs), replay_buffer.Transition(obs, action, reward, next_obs, terminal)

    return jax.lax.scan(step, (state, obs), jax.random.split(key, n))[1]


def test_the_model_learns_a_fixed_batch_of_panflute_transitions():
    cfg = make_cfg(env_config={"num_pipes": 5}, model_alpha=3e-3)
    env, model = make_model(cfg)
    hp = config.traced_hyperparameters(cfg)
    transitions = panflute_transitions(env, jax.random.PRNGKey(0), 64)
    params = sm.init_model(model, jax.random.PRNGKey(1), env.observation_size)
    learner = agents.Learner(None, None, None, params, agents.init_optimizer(params))

    @jax.jit
    def train(learner, key):
        def body(learner, key):
            learner, diagnostics = model_parts.model_step(
                lambda params: sm.model_loss(model, params, transitions, key, hp), learner, hp
            )
            return learner, diagnostics

        return jax.lax.scan(body, learner, jax.random.split(key, 300))

    _, terms = train(learner, jax.random.PRNGKey(2))
    first = {name[len("model_") :]: float(v[0]) for name, v in terms.items()}
    last = {name[len("model_") :]: float(jnp.mean(v[-10:])) for name, v in terms.items()}
    # 15 bits at log 2 each at first; the next pipes are a shift of these plus the action.
    assert last["obs"] < 0.2 * first["obs"], (first, last)
    assert last["termination"] < 0.2 * first["termination"], (first, last)  # never terminal
    # the reward term cannot fall below log(2 pi) / 2 = 0.92, the NLL of a perfect mean
    assert last["reward"] < first["reward"] and last["reward"] < 1.2, (first, last)


def test_one_update_takes_one_model_step_and_one_q_step():
    cfg = make_cfg()
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    agent = sm.build_agent(cfg, env)
    hp = config.traced_hyperparameters(cfg)
    learner, buffer = agent.init(jax.random.PRNGKey(0))
    transitions = panflute_transitions(env, jax.random.PRNGKey(1), 16)
    for i in range(16):
        buffer = agent.store(buffer, None, jax.tree.map(lambda x, i=i: x[i], transitions))
    updated, diagnostics = jax.jit(agent.update)(learner, buffer, jax.random.PRNGKey(2), hp)
    assert set(diagnostics) == set(agent.diagnostics)
    assert all(np.isfinite(v) and v.shape == () for v in diagnostics.values())
    for opt in (updated.q_opt, updated.model_opt):
        assert optax.tree_utils.tree_get(opt, "count") == 1
    for name in ("q_params", "model_params"):
        before, after = (
            jax.tree.leaves(getattr(learner, name)),
            jax.tree.leaves(getattr(updated, name)),
        )
        assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True)), name
    assert set(updated.model_params) == {"reward", "termination", "next_obs"}
