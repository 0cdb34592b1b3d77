"""What produced a run's files: the project's version (a hash of the source files a run
executes), the versions of jax, jaxlib, haiku and optax, and the kind of device it ran on.

`.out` files and checkpoints record it (`record`); `--resume` refuses to go on from a checkpoint
of another provenance unless told to (`differences`), and the Figure 4 driver does not count
another version's outputs as finished. Saved programs are keyed on the same version.
"""

from __future__ import annotations

import hashlib
import os
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Top-level scripts that read, schedule or time runs, and the libraries under them that only
# read results (`scoring.py`, `curves.py`): editing them changes no run's numbers.
TOOLS = frozenset(
    {"plot_metric.py", "sweep_summary.py", "reproduce_figure4.py", "benchmark.py"}
    | {"scoring.py", "curves.py"}
)
LIBRARIES = {"jax": "jax", "jaxlib": "jaxlib", "haiku": "dm-haiku", "optax": "optax"}


def source_files() -> list[str]:
    """The project's source files a training run executes, relative to the repository: every
    top-level module but the tools, and the run machinery (`training/`)."""
    top = [name for name in os.listdir(ROOT) if name.endswith(".py") and name not in TOOLS]
    machinery = [
        os.path.join("training", name)
        for name in os.listdir(os.path.join(ROOT, "training"))
        if name.endswith(".py")
    ]
    return sorted(top + machinery)


def project_version() -> str:
    """A hash of `source_files`: their names and contents."""
    digest = hashlib.sha256()
    for name in source_files():
        with open(os.path.join(ROOT, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    return {name: metadata.version(package) for name, package in LIBRARIES.items()}


def versions() -> dict[str, str]:
    """The project's version and its libraries': what a file's numbers depend on wherever it
    ran."""
    return {"project": project_version(), **library_versions()}


def record(device_kind: str) -> dict[str, str]:
    """The provenance of a run on devices of `device_kind` (jax's `Device.device_kind`)."""
    return {**versions(), "device": device_kind}


def differences(saved: dict, current: dict) -> list[str]:
    """Each way `saved` and `current` differ, as `what: saved -> current`."""
    return [
        f"{key} {saved.get(key)} -> {current.get(key)}"
        for key in current
        if saved.get(key) != current.get(key)
    ]


EARLIER = "earlier"  # in a resumed run's provenance: what produced its steps before


def resumed(saved: dict, current: dict, step: int) -> dict:
    """The provenance of a run resumed at `step` from a checkpoint `saved` records: `current`,
    and, when another version wrote the steps before (`--accept-version-change`), each earlier
    one in `EARLIER` with the step it ran until, so that the run's files never claim one
    version for a mixed run."""
    earlier = list(saved.get(EARLIER, []))
    if differences({k: v for k, v in saved.items() if k != EARLIER}, current):
        earlier.append({**{k: v for k, v in saved.items() if k != EARLIER}, "until_step": step})
    return {**current, EARLIER: earlier} if earlier else dict(current)
