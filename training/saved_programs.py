"""Saved programs: a second launch of the same config skips tracing and lowering.

`SavedProgramJit` keeps each jitted function's traced and lowered program (StableHLO, through
`jax.export`) on disk under a key of everything the program depends on (`program_key`); XLA's
persistent cache then supplies the compiled code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import warnings
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


# Folders of saved programs where a save failed (a full disk): not tried again, so a run says
# so once, not once per program.
_UNWRITABLE: set[str] = set()


def disable_compilation_cache() -> None:
    """No more writes to XLA's persistent cache in this process, and no word from JAX about
    the entries it could not write (the caller has said why in one line)."""
    jax.config.update("jax_enable_compilation_cache", False)  # JAX reads the variable too
    warnings.filterwarnings("ignore", message="Error writing persistent compilation cache entry")


def seal_path(path: str) -> str:
    """Where a saved program's seal is kept: beside it, in a file of its own."""
    return path + ".sha256"


def seal(path: str, program: bytes) -> str:
    """What a saved program's seal holds: the hash of its name (which holds its key,
    `program_key`, and its input signature) with its bytes. A program copied over another's
    file, with or without its own seal, does not match the seal its new name needs, so it is
    traced anew rather than run as if it were the other program."""
    return hashlib.sha256(os.path.basename(path).encode() + b"\0" + program).hexdigest()


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
        exported = self._load(path)
        if exported is not None:
            return exported
        exported = jax.export.export(jax.jit(self.fn, **self.jit_kwargs))(*args)
        directory = os.path.dirname(path)
        if directory in _UNWRITABLE:  # said once already
            return exported
        program = exported.serialize()
        try:
            os.makedirs(directory, exist_ok=True)
            write_atomic(path, lambda f: f.write(program))
            # The seal last: a program without its seal is traced anew, never trusted.
            write_atomic(seal_path(path), lambda f: f.write(seal(path, program).encode()))
        except OSError as error:  # a full or read-only cache: only the next start-up is slower
            print(
                f"warning: cannot save the traced program {path} ({error.strerror}); "
                "a later launch traces it again",
                file=sys.stderr,
            )
            _UNWRITABLE.add(directory)
            disable_compilation_cache()
        return exported

    @staticmethod
    def _load(path: str):
        """The saved program at `path` when its seal says it is the one saved under this name
        (not another program copied over it, say from a shared cache, nor a damaged file);
        else None, after a warning line for a file that is there but not trusted."""
        if not os.path.exists(path):
            return None
        try:
            with open(path, "rb") as f:
                program = f.read()
            with open(seal_path(path), "rb") as f:
                sealed = f.read().decode(errors="replace")
        except OSError as error:
            why = f"cannot read {error.filename} ({error.strerror})"
        else:
            why = None if sealed == seal(path, program) else "it does not match its seal"
            if why is None:
                try:
                    return jax.export.deserialize(bytearray(program))
                except Exception as error:  # sealed but unreadable by this jax: trace anew
                    why = f"not loaded ({str(error).splitlines()[0] if str(error) else error!r})"
        print(
            f"warning: saved program {path}: {why} (copied over or damaged?); tracing it anew",
            file=sys.stderr,
        )
        return None

    def __call__(self, *args):
        return self._jitted_for(args)(*args)

    def lower(self, *args):
        return self._jitted_for(args).lower(*args)

    def _cache_size(self) -> int:
        return sum(f._cache_size() for f in self.jitted.values())


_register_saved_pytrees()
