"""The replay buffer (design §6): a ring buffer of one seed, as a pytree, with binary
observations stored as packed bits.

`ReplayBuffer` describes how items are stored; `BufferState` holds them. ER, simple and latent
agents store real transitions (`transition_buffer`); the perfect model stores environment states.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


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
