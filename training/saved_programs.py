"""Saved programs: a second launch of the same config skips tracing and lowering.

`SavedProgramJit` keeps each jitted function's traced and lowered program (StableHLO, through
`jax.export`) on disk under a key of everything the program depends on (`program_key`); XLA's
persistent cache then supplies the compiled code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

import agents
import environments
import replay_buffer
from training import loop, provenance
from training.files import write_atomic
from training.schema import HOST_ONLY_KEYS, TRACED_KEYS


def program_key(cfg: dict, sharding: NamedSharding, num_points: int = 1) -> str:
    """What the compiled functions depend on: the config less the host-only and traced keys
    (traced values are arguments of the programs: runs that differ only in them share one), the
    number of grid points, the project's version (its source files), the versions of jax,
    jaxlib, haiku and optax, XLA's flags and the devices with their mesh."""
    digest = hashlib.sha256()
    run_cfg = {k: v for k, v in cfg.items() if k not in HOST_ONLY_KEYS | TRACED_KEYS}
    digest.update(json.dumps(run_cfg, sort_keys=True, default=str).encode())
    devices = [f"{d.platform}:{d.device_kind}" for d in sharding.mesh.devices.flat]
    mesh = dict(sharding.mesh.shape)
    flags = os.environ.get("XLA_FLAGS", "")
    digest.update(f"{provenance.versions()} {devices} {mesh} {num_points} {flags}".encode())
    return digest.hexdigest()[:24]


def _register_saved_pytrees() -> None:
    """Name the pytree types that cross the compiled functions' boundary, so that `jax.export`
    can save their structure."""
    types = [
        loop.TrainState,
        loop.ChunkReport,
        agents.Learner,
        replay_buffer.BufferState,
        replay_buffer.Transition,
        optax.ScaleByAdamState,
        optax.EmptyState,
        *environments.STATE_TYPES,
    ]
    for cls in types:
        name = f"model_generalization.{cls.__module__}.{cls.__qualname__}"
        with contextlib.suppress(ValueError):  # already registered (a module imported twice)
            jax.export.register_namedtuple_serialization(cls, serialized_name=name)


class SavedProgramJit:
    """`jax.jit(fn, **jit_kwargs)` whose traced and lowered program (StableHLO, through
    `jax.export`) is saved beside `path_prefix` at its first call, and loaded instead of
    tracing `fn` on a later launch. Tracing and lowering an agent is most of the start-up once
    XLA's persistent cache holds the compiled code. One program per input signature."""

    def __init__(self, fn: Callable, jit_kwargs: dict, path_prefix: str):
        self.fn, self.jit_kwargs, self.path_prefix = fn, jit_kwargs, path_prefix
        self.jitted: dict[str, Callable] = {}

    def _jitted_for(self, args) -> Callable:
        leaves, tree = jax.tree.flatten(args)
        signature = str(tree) + str([(jnp.shape(x), jnp.result_type(x)) for x in leaves])
        if signature not in self.jitted:
            digest = hashlib.sha256(signature.encode()).hexdigest()[:16]
            exported = self._load_or_export(f"{self.path_prefix}-{digest}.jaxexport", args)
            self.jitted[signature] = jax.jit(exported.call, **self.jit_kwargs)
        return self.jitted[signature]

    def _load_or_export(self, path: str, args):
        if os.path.exists(path):
            try:
                with open(path, "rb") as f:
                    return jax.export.deserialize(bytearray(f.read()))
            except Exception as error:  # unreadable: trace anew and replace it
                print(f"{path}: not loaded ({error}); tracing anew", file=sys.stderr)
        # Traced through a wrapper that dies with this call, and used as a later launch uses it
        # (deserialised): JAX caches a function's jaxpr and lowered module for as long as the
        # function, or an `Exported` of it, lives, and `self.fn` lives as long as the run.
        once = functools.wraps(self.fn)(lambda *a: self.fn(*a))
        serialized = jax.export.export(jax.jit(once, **self.jit_kwargs))(*args).serialize()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, lambda f: f.write(serialized))
        except OSError as error:  # a full or read-only cache: only the next start-up is slower
            print(
                f"warning: cannot save the traced program {path} ({error.strerror}); "
                "a later launch traces it again",
                file=sys.stderr,
            )
        return jax.export.deserialize(serialized)

    def __call__(self, *args):
        return self._jitted_for(args)(*args)

    def lower(self, *args):
        return self._jitted_for(args).lower(*args)

    def _cache_size(self) -> int:
        return sum(f._cache_size() for f in self.jitted.values())


_register_saved_pytrees()
