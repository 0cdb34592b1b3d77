"""The packed-bit replay buffer (`replay_buffer.py`, SPEC §6): every leaf dtype comes back as it
was added, bit for bit; the ring wraps around keeping the last items; sampling draws only from
written slots; booleans take a bit each."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import replay_buffer


def bits(i, size):
    """The binary expansion of i (wrapping around the width), as a bool vector."""
    return np.array([(i >> (k % 20)) & 1 for k in range(size)], dtype=bool)


def item(i, obs_size):
    """A transition that encodes `i` in every field."""
    return replay_buffer.Transition(
        obs=jnp.asarray(bits(i, obs_size)),
        action=jnp.int32(i),
        reward=jnp.float32(i + 0.5),
        next_obs=jnp.asarray(~bits(i, obs_size)),
        terminal=jnp.bool_(i % 2 == 1),
    )


def assert_aligned(sample, obs_size):
    """Every field of every sampled row comes from the same added item."""
    sample = jax.tree_util.tree_map(np.asarray, sample)
    ids = sample.action
    np.testing.assert_array_equal(sample.reward, ids + 0.5)
    np.testing.assert_array_equal(np.asarray(sample.terminal), ids % 2 == 1)
    for row, i in enumerate(ids):
        np.testing.assert_array_equal(sample.obs[row], bits(int(i), obs_size))
        np.testing.assert_array_equal(sample.next_obs[row], ~bits(int(i), obs_size))
    return ids


def test_bool_leaves_are_stored_packed():
    obs_size, capacity = 64, 1000
    buffer = replay_buffer.transition_buffer(obs_size, capacity)
    state = buffer.init()
    assert state.storage.obs.dtype == jnp.uint8
    assert state.storage.next_obs.dtype == jnp.uint8
    assert state.storage.terminal.dtype == jnp.uint8
    assert state.storage.obs.shape[0] == capacity
    assert state.storage.obs.size <= capacity * obs_size // 8 + capacity  # 8 bits per byte
    actual_bytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(state.storage))
    assert buffer.stored_bytes() == actual_bytes
    float32_bytes = capacity * (obs_size * 4 * 2 + 4 + 4 + 4)
    assert buffer.stored_bytes() < float32_bytes / 10
    # 8 + 8 bytes of packed observations, int32 action, float32 reward, 1 byte terminal
    assert buffer.stored_bytes() == capacity * (8 + 8 + 4 + 4 + 1)


def test_wrap_around_keeps_last_items_in_ring_order():
    obs_size = 13
    buffer = replay_buffer.transition_buffer(obs_size, 5)
    state = buffer.init()
    assert int(state.position) == 0 and int(state.size) == 0
    add = jax.jit(buffer.add)
    for i in range(8):
        state = add(state, item(i, obs_size))
        assert int(state.size) == min(i + 1, 5)
        assert int(state.position) == (i + 1) % 5
    assert int(state.position) == 3 and int(state.size) == 5
    # Slots 0-2 were overwritten by items 5-7; slots 3-4 still hold items 3-4.
    np.testing.assert_array_equal(np.asarray(state.storage.action), [5, 6, 7, 3, 4])
    np.testing.assert_array_equal(np.asarray(state.storage.reward), [5.5, 6.5, 7.5, 3.5, 4.5])
    sample = buffer.sample(state, jax.random.PRNGKey(0), 400)
    ids = assert_aligned(sample, obs_size)
    assert set(ids.tolist()) == {3, 4, 5, 6, 7}


def test_sampling_only_from_written_slots():
    obs_size = 13
    buffer = replay_buffer.transition_buffer(obs_size, 100)
    state = buffer.init()
    for i in (10, 21, 33):
        state = buffer.add(state, item(i, obs_size))
    assert int(state.size) == 3 and int(state.position) == 3
    sample = buffer.sample(state, jax.random.PRNGKey(1), 3000)
    ids = np.asarray(sample.action)
    assert set(ids.tolist()) == {10, 21, 33}
    counts = np.array([(ids == i).sum() for i in (10, 21, 33)])
    assert np.all(np.abs(counts - 1000) < 5 * np.sqrt(3000 * (1 / 3) * (2 / 3)))
    assert_aligned(sample, obs_size)


def test_sampled_bool_observations_are_bit_exact():
    rng = np.random.default_rng(0)
    num_items = 6
    items = [
        {
            "id": np.int32(i),
            "odd": rng.random(13) < 0.5,
            "wide": rng.random(64) < 0.5,
            "grid": rng.random((3, 5)) < 0.5,
            "flag": np.bool_(rng.random() < 0.5),
        }
        for i in range(num_items)
    ]
    buffer = replay_buffer.ReplayBuffer(items[0], num_items)
    state = buffer.init()
    assert state.storage["odd"].dtype == jnp.uint8
    assert state.storage["wide"].shape == (num_items, 8)
    for it in items:
        state = buffer.add(state, jax.tree_util.tree_map(jnp.asarray, it))
    sample = buffer.sample(state, jax.random.PRNGKey(2), 200)
    assert sample["odd"].dtype == jnp.bool_ and sample["odd"].shape == (200, 13)
    assert sample["wide"].shape == (200, 64)
    assert sample["grid"].shape == (200, 3, 5)
    assert sample["flag"].shape == (200,) and sample["flag"].dtype == jnp.bool_
    ids = np.asarray(sample["id"])
    assert set(ids.tolist()) == set(range(num_items))
    for key in ("odd", "wide", "grid", "flag"):
        expected = np.stack([items[i][key] for i in ids])
        np.testing.assert_array_equal(np.asarray(sample[key]), expected)


def test_int_dtype_storage_round_trips_small_ints():
    example = {"pos": np.zeros(2, np.int32), "value": np.float32(0.0), "mask": np.zeros(3, bool)}
    buffer = replay_buffer.ReplayBuffer(example, 4, int_dtype=jnp.int8)
    state = buffer.init()
    assert state.storage["pos"].dtype == jnp.int8
    assert state.storage["value"].dtype == jnp.float32
    assert state.storage["mask"].dtype == jnp.uint8
    rows = [
        {"pos": [-128, 127], "value": 0.25, "mask": [True, False, True]},
        {"pos": [0, -1], "value": -3.5, "mask": [False, False, True]},
        {"pos": [100, -77], "value": 1e-3, "mask": [True, True, True]},
    ]
    for row in rows:
        state = buffer.add(
            state,
            {
                "pos": jnp.array(row["pos"], jnp.int32),
                "value": jnp.float32(row["value"]),
                "mask": jnp.array(row["mask"]),
            },
        )
    sample = buffer.sample(state, jax.random.PRNGKey(3), 100)
    assert sample["pos"].dtype == jnp.int32
    sample = jax.tree_util.tree_map(np.asarray, sample)
    values = sample["value"]
    seen = set()
    for k, v in enumerate(values):
        (match,) = [j for j, row in enumerate(rows) if np.float32(row["value"]) == v]
        seen.add(match)
        np.testing.assert_array_equal(sample["pos"][k], rows[match]["pos"])
        np.testing.assert_array_equal(sample["mask"][k], rows[match]["mask"])
    assert seen == {0, 1, 2}


def test_buffer_under_jit_and_vmap_over_seeds():
    obs_size, num_seeds = 13, 3
    buffer = replay_buffer.transition_buffer(obs_size, 4)
    states = jax.vmap(lambda _: buffer.init())(jnp.arange(num_seeds))
    assert states.storage.obs.shape[:2] == (num_seeds, 4)
    add = jax.jit(jax.vmap(buffer.add))
    for step in range(6):
        # seed s, step t adds item 100 * s + t
        batch = [item(100 * s + step, obs_size) for s in range(num_seeds)]
        states = add(states, jax.tree_util.tree_map(lambda *x: jnp.stack(x), *batch))
    np.testing.assert_array_equal(np.asarray(states.position), [2, 2, 2])
    np.testing.assert_array_equal(np.asarray(states.size), [4, 4, 4])
    sample = jax.jit(
        jax.vmap(functools.partial(buffer.sample, batch_size=100)),
    )(states, jax.random.split(jax.random.PRNGKey(4), num_seeds))
    assert sample.obs.shape == (num_seeds, 100, obs_size)
    sample = jax.tree_util.tree_map(np.asarray, sample)
    for s in range(num_seeds):
        per_seed = jax.tree_util.tree_map(lambda x, s=s: x[s], sample)
        ids = assert_aligned(per_seed, obs_size)
        assert set(ids.tolist()) == {100 * s + t for t in range(2, 6)}


# --------------------------------------------------------------------------------------------
# Every leaf dtype, through a wrapped-around ring
# --------------------------------------------------------------------------------------------

DTYPES = [
    jnp.bool_,
    jnp.uint8,
    jnp.int8,
    jnp.int16,
    jnp.int32,
    jnp.uint32,
    jnp.float16,
    jnp.bfloat16,
    jnp.float32,
]
SHAPES = [(), (1,), (13,), (3, 5), (2, 2, 9)]


def random_leaf(rng, dtype, shape) -> np.ndarray:
    """Values over the dtype's whole range: its extremes, and for floats inf, -inf, NaN, -0.0."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=np.int64)
        special = [info.min, info.max, 0]
    else:
        values = rng.normal(0.0, 1e3, size=shape)
        special = [np.inf, -np.inf, np.nan, -0.0, float(jnp.finfo(dtype).max)]
    values = np.array(values).reshape(-1)
    values[: min(len(special), values.size)] = special[: values.size]
    return values.reshape(shape).astype(dtype)


def packed_row_bytes(dtype, shape) -> int:
    size = int(np.prod(shape, dtype=int))
    return -(-size // 8) if dtype == jnp.bool_ else size * np.dtype(dtype).itemsize


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_every_leaf_dtype_and_shape_round_trips_through_a_wrapped_ring(dtype):
    """Items of one leaf per shape (and an id), 11 of them into 4 slots: the storage takes the
    packed size, sampling draws only the last 4, each bit for bit as added."""
    rng = np.random.default_rng(np.dtype(dtype).num)
    capacity, num_added = 4, 11
    items = [
        {"id": np.int32(i), **{f"leaf{shape}": random_leaf(rng, dtype, shape) for shape in SHAPES}}
        for i in range(num_added)
    ]
    buffer = replay_buffer.ReplayBuffer(items[0], capacity)
    state = buffer.init()
    row_bytes = 4 + sum(packed_row_bytes(dtype, shape) for shape in SHAPES)
    assert buffer.stored_bytes() == capacity * row_bytes
    assert sum(leaf.nbytes for leaf in jax.tree.leaves(state.storage)) == capacity * row_bytes
    add = jax.jit(buffer.add)
    for it in items:
        state = add(state, jax.tree.map(jnp.asarray, it))
    assert int(state.size) == capacity and int(state.position) == num_added % capacity
    sample = jax.device_get(buffer.sample(state, jax.random.PRNGKey(0), 64))
    assert set(sample["id"].tolist()) == set(range(num_added - capacity, num_added))
    for key in items[0]:
        assert sample[key].dtype == items[0][key].dtype, key
        assert sample[key].shape == (64, *np.shape(items[0][key])), key
        expected = np.stack([items[i][key] for i in sample["id"]])
        # bit for bit: NaN and -0.0 too
        np.testing.assert_array_equal(sample[key].view(np.uint8), expected.view(np.uint8), key)
