"""Checkpoints: a run killed part-way and resumed ends exactly as the run never interrupted."""

import json
import os
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from helpers import (
    PROVENANCE,
    definition,
    load_pickle,
    small_checkpoint,
    start_script,
    tiny_config,
)

from training import checkpoint, config, schema

NUM_STEPS = 1000  # 20 chunks of 50 steps: long enough to be killed part-way


def finish(process: subprocess.Popen) -> str:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


def kill_after_two_checkpoints(process: subprocess.Popen, checkpoint_path) -> None:
    """SIGKILL once the run has written its second checkpoint (the first is then `.prev`)."""
    deadline = time.time() + 300
    while not os.path.exists(f"{checkpoint_path}.prev") and process.poll() is None:
        assert time.time() < deadline, "no checkpoint written"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()


def output_files(tmp_path, output: str) -> list[str]:
    return sorted(
        name[len(output) :]
        for name in os.listdir(tmp_path)
        if name.startswith(output) and name.endswith((".out", ".params"))
    )


def assert_same_files(tmp_path, a: str, b: str) -> None:
    names = output_files(tmp_path, a)
    assert names and names == output_files(tmp_path, b)
    for name in names:
        first, second = ((tmp_path / (p + name)).read_bytes() for p in (a, b))
        assert first == second, name  # bit for bit


CASES = {
    # a grid of two points: a grid run checkpoints and resumes its whole state too
    "ER": {"alpha_adam": [1e-3, 3e-3]},
    "perfect_model": {},
    "simple_model": {},
    "categorical_latent": {},
}


@pytest.mark.parametrize("agent_type", list(CASES))
def test_a_killed_run_resumes_to_the_outputs_of_an_uninterrupted_run(agent_type, tmp_path):
    raw = tiny_config(agent_type, num_steps=NUM_STEPS, checkpoint_frequency=50, **CASES[agent_type])
    finish(start_script(agent_type, raw, tmp_path, "whole"))

    killed = start_script(agent_type, raw, tmp_path, "cut")
    kill_after_two_checkpoints(killed, tmp_path / "cut.ckpt")
    assert killed.returncode == -signal.SIGKILL
    out = next(name for name in output_files(tmp_path, "cut") if name.endswith(".out"))
    evaluations = len(load_pickle(tmp_path / f"cut{out}")["metrics"]["eval_times"])
    assert evaluations < NUM_STEPS // 50  # it was killed part-way
    if agent_type == "ER":  # a damaged latest checkpoint: the run goes on from the one before
        latest = tmp_path / "cut.ckpt"
        latest.write_bytes(latest.read_bytes()[:1000])

    stderr = finish(start_script(agent_type, raw, tmp_path, "cut", "--resume"))
    if agent_type == "ER":
        (line,) = [line for line in stderr.splitlines() if "damaged" in line]
        assert line.startswith(f"warning: {tmp_path / 'cut.ckpt'} is damaged (")
    assert_same_files(tmp_path, "whole", "cut")
    assert not list(tmp_path.glob("*.tmp"))


def test_extend_a_finished_run_and_refuse_a_changed_config(tmp_path):
    raw = tiny_config("ER", num_steps=200)
    finish(start_script("ER", raw, tmp_path, "short"))
    longer = {**raw, "num_steps": 400}
    # Changing only num_steps extends a finished run: as if it had been 400 steps long.
    finish(start_script("ER", longer, tmp_path, "short", "--resume"))
    finish(start_script("ER", longer, tmp_path, "long"))
    assert_same_files(tmp_path, "long", "short")

    changed = start_script("ER", {**longer, "gamma": 0.5}, tmp_path, "short", "--resume")
    _, stderr = changed.communicate(timeout=300)
    assert changed.returncode == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith("--resume: gamma: the checkpoint ") and "gamma=0.9" in line, line
    assert "the config has 0.5" in line


# ------------------------------------------------------------------------------------------
# The checkpoint file itself
# ------------------------------------------------------------------------------------------


def test_a_checkpoint_loads_with_numpy_and_restores_state_and_progress(tmp_path):
    path, cfg, state, shapes, progress = small_checkpoint(tmp_path)
    restored = checkpoint.load(path, cfg, shapes, PROVENANCE)
    assert restored.path == path and restored.note is None
    np.testing.assert_array_equal(restored.leaves[0], state["n"])  # leaves in tree order
    np.testing.assert_array_equal(restored.leaves[1], state["w"])
    assert restored.progress.chunks_done == 2 and restored.progress.steps_since_save == 100
    assert restored.progress.eval_times == [0, 50]
    for name, values in progress.history.items():
        np.testing.assert_array_equal(restored.progress.history[name], values)
    with np.load(path, allow_pickle=False) as archive:  # no pickle: loads anywhere
        meta = json.loads(str(archive["meta"]))
    assert meta["config"]["seed"] == 0 and meta["provenance"] == PROVENANCE
    # the generation before it, beside it; no third
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt", "run.ckpt.prev"]


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"num_seeds": 3}, "num_seeds: the checkpoint"),
        ({"seed": 1}, "seed: the checkpoint"),
        ({"environment": "OpenGrid"}, "environment: the checkpoint"),
        ({"num_hidden_units": 32}, "num_hidden_units: the checkpoint"),
        ({"agent_type": "perfect_model"}, "agent_type: the checkpoint"),
        ({"num_steps": 20}, "num_steps: the checkpoint"),  # shorter than what was run
    ],
)
def test_resuming_with_another_config_names_the_difference(tmp_path, change, expected):
    path, cfg, _, shapes, _ = small_checkpoint(tmp_path)
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path, {**cfg, **change}, shapes, PROVENANCE)
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_a_checkpoint_from_before_a_key_existed_resumes_at_its_default_only(tmp_path):
    older = {
        **config.validate_config(tiny_config("ER"), definition("ER")),
        "agent_type": "ER",
        "seed": 0,
    }
    del older["matmul_precision"]  # as written before the key existed
    state = {"w": np.zeros((1, 2, 3), np.float32)}
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    path = str(tmp_path / "old.ckpt")
    checkpoint.save(path, older, state, checkpoint.Progress(1, 50, [0], {}), PROVENANCE)
    current = {**older, "matmul_precision": "default"}
    assert checkpoint.load(path, current, shapes, PROVENANCE).progress.chunks_done == 1
    with pytest.raises(checkpoint.CheckpointError, match='matmul_precision="default", the co'):
        checkpoint.load(path, {**current, "matmul_precision": "float32"}, shapes, PROVENANCE)


def test_a_state_of_another_layout_is_refused(tmp_path):
    path, cfg, _, shapes, _ = small_checkpoint(tmp_path)
    other = {**shapes, "w": jax.ShapeDtypeStruct((1, 2, 4), np.float32)}
    with pytest.raises(checkpoint.CheckpointError, match="layout"):
        checkpoint.load(path, cfg, other, PROVENANCE)
    # the next checkpoint interval default: a tenth of the run
    assert schema.checkpoint_every({**cfg, "checkpoint_frequency": None}) == 20


def test_another_version_is_refused_unless_accepted(tmp_path):
    path, cfg, _, shapes, _ = small_checkpoint(tmp_path)
    newer = {**PROVENANCE, "jax": "0.11.0", "device": "NVIDIA H200"}
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path, cfg, shapes, newer)
    line = str(info.value)
    assert "jax 0.10.2 -> 0.11.0" in line and "device cpu -> NVIDIA H200" in line
    assert "--accept-version-change" in line and "\n" not in line
    assert checkpoint.load(path, cfg, shapes, newer, accept_version_change=True).path == path


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bit_flipped(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :]


DAMAGE = {
    "truncated": truncated,
    "empty": lambda data: b"",
    "bit-flipped": bit_flipped,
    "random bytes": lambda data: np.random.default_rng(0).bytes(len(data)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_falls_back_to_the_one_before_it(tmp_path, damage):
    path, cfg, _, shapes, _ = small_checkpoint(tmp_path)
    latest = tmp_path / "run.ckpt"
    latest.write_bytes(DAMAGE[damage](latest.read_bytes()))
    restored = checkpoint.load(path, cfg, shapes, PROVENANCE)
    assert restored.path == path + ".prev" and restored.progress.chunks_done == 1
    assert restored.note.startswith(f"warning: {path} is damaged (")
    assert restored.note.endswith(f"going on from the one before it, {path}.prev (step 50)")

    previous = tmp_path / "run.ckpt.prev"
    previous.write_bytes(DAMAGE[damage](previous.read_bytes()))
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path, cfg, shapes, PROVENANCE)
    line = str(info.value)
    assert f"{path} is damaged" in line and f"{path}.prev is damaged" in line, line
    assert "delete them to start again from step 0" in line and "\n" not in line


def test_a_missing_latest_checkpoint_falls_back_too(tmp_path):
    """A kill between the two renames of a save leaves only the one before it."""
    path, cfg, _, shapes, _ = small_checkpoint(tmp_path)
    os.remove(path)
    assert checkpoint.exists(path)
    restored = checkpoint.load(path, cfg, shapes, PROVENANCE)
    assert restored.path == path + ".prev" and f"there is no {path}" in restored.note
    checkpoint.remove(path)
    assert not checkpoint.exists(path) and not os.listdir(tmp_path)
