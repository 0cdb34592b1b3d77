"""What a run trusts is checked, and nothing outside its outputs is written (issue 24, items 1
to 8): links planted where a run writes, a rerun over a checkpoint, a saved program copied over
another, checkpoint metadata that disagrees with its arrays, sizes that grow work, inputs that
once ended in tracebacks, silent wrong results, and a full compilation cache. Most stop before
anything compiles; one test trains a tiny run."""

import json
import os
import pickle
import shutil
import time
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    PROVENANCE,
    fill,
    main_in_process,
    small_checkpoint,
    small_filesystem,
    tiny_config,
)

import plot_metric
from train_ER_DQN import DEFINITION as ER
from training import (
    checkpoint,
    compilation,
    config,
    experiment,
    files,
    provenance,
    saved_programs,
)

FAST = {"training_start_time": 0, "save_params": True}


class CompiledError(Exception):
    """The run got as far as compiling: every check before it passed."""


@pytest.fixture
def no_compilation(monkeypatch):
    def stop(*args, **kwargs):
        raise CompiledError

    monkeypatch.setattr(experiment, "compile_setup", stop)


def main_until_compiled(tmp_path, capsys, raw, *flags):
    """`main_in_process` of ER, stopped where it would compile: (exit status or "compiled",
    stderr lines)."""
    try:
        return main_in_process("ER", tmp_path, capsys, raw, *flags)
    except CompiledError:
        return "compiled", capsys.readouterr().err.strip().splitlines()


# --------------------------------------------------------------------------------------------
# 1. Nothing is written through a link
# --------------------------------------------------------------------------------------------

WRITTEN = [".lock", ".out", ".params", ".ckpt", ".ckpt.prev"]


@pytest.mark.parametrize("resume", [False, True])
@pytest.mark.parametrize("suffix", WRITTEN)
def test_a_link_where_a_run_writes_is_one_line_and_its_target_untouched(
    tmp_path, capsys, no_compilation, suffix, resume
):
    sentinel = tmp_path / "victim"
    sentinel.write_text("precious")
    (tmp_path / f"run{suffix}").symlink_to(sentinel)
    flags = ["--resume"] if resume else []
    code, lines = main_until_compiled(
        tmp_path, capsys, tiny_config("ER", **FAST), f"--output={tmp_path / 'run'}", *flags
    )
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == (
        f"--output: {tmp_path / 'run'}{suffix} is a symbolic link (to {sentinel}), where the run "
        "writes a file of its own; a run never writes through a link: remove it"
    )
    assert sentinel.read_text() == "precious"


def test_a_dangling_lock_link_creates_nothing(tmp_path):
    """Planted after the check (a race): the lock is opened without following links."""
    (tmp_path / "run.lock").symlink_to(tmp_path / "created")
    lock = files.OutputLock(str(tmp_path / "run"))
    with pytest.raises(files.OutputError, match="is a symbolic link"):
        lock.__enter__()
    assert not (tmp_path / "created").exists()


def test_temporaries_never_open_a_planted_name(tmp_path):
    """`write_atomic`'s temporary names are made with O_EXCL (mkstemp): a planted link is never
    opened, and the rename replaces a link at the final name rather than write through it."""
    sentinel = tmp_path / "victim"
    sentinel.write_text("precious")
    (tmp_path / "run.out").symlink_to(sentinel)
    files.write_atomic(str(tmp_path / "run.out"), lambda f: f.write(b"new"))
    assert sentinel.read_text() == "precious" and (tmp_path / "run.out").read_bytes() == b"new"
    assert not (tmp_path / "run.out").is_symlink()


# --------------------------------------------------------------------------------------------
# 2. A rerun never replaces a checkpoint silently
# --------------------------------------------------------------------------------------------


def test_a_rerun_over_a_checkpoint_is_refused_naming_its_step(tmp_path, capsys, no_compilation):
    raw = tiny_config("ER", **FAST)
    small_checkpoint(tmp_path)  # run.ckpt at chunk 2 (step 100), run.ckpt.prev at chunk 1
    prefix = tmp_path / "run"
    code, lines = main_until_compiled(tmp_path, capsys, raw, f"--output={prefix}")
    assert code == 2 and lines == [
        f"{prefix}.ckpt holds a run at step 100 of 200: starting again would replace it; go on "
        "from it with --resume, or start again from step 0 with --restart"
    ]
    assert checkpoint.exists(str(prefix) + ".ckpt")
    os.remove(f"{prefix}.ckpt")  # the one before it counts too
    code, lines = main_until_compiled(tmp_path, capsys, raw, f"--output={prefix}")
    assert code == 2 and lines[0].startswith(f"{prefix}.ckpt.prev holds a run at step 50 of 200")
    code, lines = main_until_compiled(tmp_path, capsys, raw, f"--output={prefix}", "--restart")
    assert code == "compiled" and not checkpoint.exists(f"{prefix}.ckpt")
    code, lines = main_in_process(
        "ER", tmp_path, capsys, raw, f"--output={prefix}", "--restart", "--resume"
    )
    assert code == 2 and lines == [
        "--resume and --restart: give one (go on, or start again from step 0)"
    ]


@pytest.fixture
def programs_cache(tmp_path, monkeypatch):
    """A compilation cache for one test's runs (later launches load the programs), off after."""
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cache"))
    yield
    jax.config.update("jax_enable_compilation_cache", False)


def test_a_finished_run_resumed_says_so(tmp_path, capsys, programs_cache):
    """(That `--restart` starts again over a checkpoint is tested above, up to compiling.)"""
    raw = tiny_config("ER", num_steps=100, save_params=False)
    prefix = str(tmp_path / "run")
    experiment.run(ER, raw, prefix, quiet=True)
    first = (tmp_path / "run.out").read_bytes()
    (tmp_path / "run.out").unlink()
    again = experiment.run(ER, raw, prefix, resume=True)
    assert again.chunks_run == 0 and (tmp_path / "run.out").read_bytes() == first
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"finished already: {prefix}.ckpt holds all 100 steps; its .out written again from it, "
        "nothing trained"
    )
    with pytest.raises(experiment.RunError, match="holds a run at step 100 of 100"):
        experiment.run(ER, raw, prefix, quiet=True)


# --------------------------------------------------------------------------------------------
# 3. A saved program is the one it is for
# --------------------------------------------------------------------------------------------


def test_a_saved_program_copied_over_another_is_traced_anew(tmp_path, capsys):
    folder = tmp_path / "programs"
    plain = saved_programs.SavedProgramJit(lambda x: x + 1, {}, str(folder / "plain"))
    double = saved_programs.SavedProgramJit(lambda x: x * 2, {}, str(folder / "double"))
    assert int(plain(jnp.int32(5))) == 6 and int(double(jnp.int32(5))) == 10
    for name in os.listdir(folder):  # the double program, with its seal, over the plain one's
        if name.startswith("double"):
            shutil.copy(folder / name, folder / name.replace("double", "plain"))
    again = saved_programs.SavedProgramJit(lambda x: x + 1, {}, str(folder / "plain"))
    capsys.readouterr()
    assert int(again(jnp.int32(5))) == 6  # not 10
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: saved program {folder / 'plain'}-")
    assert line.endswith(": it does not match its seal (copied over or damaged?); tracing it anew")
    # and it sealed its own program again: the next launch loads it without a word
    third = saved_programs.SavedProgramJit(lambda x: x + 1, {}, str(folder / "plain"))
    assert int(third(jnp.int32(5))) == 6 and capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------
# 4. Checkpoint metadata is checked before use; a checkpoint that fails is damaged
# --------------------------------------------------------------------------------------------


def rewrite_meta(path: str, change) -> None:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays["meta"]))
    change(meta)
    arrays["meta"] = np.array(json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def set_field(name, value):
    return lambda meta: meta.__setitem__(name, value)


METADATA = {
    "chunks_done a string": (set_field("chunks_done", "2"), "its chunks_done: expected an int"),
    "chunks_done disagrees with the history": (
        set_field("chunks_done", 1),
        "its steps_since_save: expected 0 to 50 (the steps run), got 100",
    ),
    "no chunks_done": (lambda meta: meta.pop("chunks_done"), "its metadata has no chunks_done"),
    "eval_times a list of strings": (
        set_field("eval_times", ["0", "50"]),
        "its eval_times: expected the 2 chunks' start steps",
    ),
    "steps_since_save negative": (
        set_field("steps_since_save", -1),
        "its steps_since_save: expected 0 to 100",
    ),
    "chunks_done huge": (set_field("chunks_done", 10**30), "its eval_times"),
    "history a string": (set_field("history", "reward_rates"), "its history: expected a list"),
    "config a list": (set_field("config", []), "its config: expected an object"),
    "provenance null": (set_field("provenance", None), "its provenance: expected an object"),
    "history of another name": (
        set_field("history", ["reward_rates", "other"]),
        "history_other: expected float32[2, 1, 2], got nothing",
    ),
}


@pytest.mark.parametrize("variant", list(METADATA))
def test_checkpoint_metadata_that_disagrees_is_damage_and_the_one_before_it_is_used(
    tmp_path, variant
):
    path, cfg, _, shapes, _ = small_checkpoint(tmp_path)
    change, why = METADATA[variant]
    rewrite_meta(path, change)
    restored = checkpoint.load(path, cfg, shapes, PROVENANCE)
    assert restored.path == path + ".prev" and restored.progress.chunks_done == 1
    assert restored.note.startswith(f"warning: {path} is damaged ({why}"), restored.note
    assert "\n" not in restored.note


def test_a_checkpoint_missing_a_metric_of_the_run_is_damage(tmp_path):
    path, cfg, _, shapes, _ = small_checkpoint(tmp_path)
    metrics = ("reward_rates", "q_loss", "diverged")
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.load(path, cfg, shapes, PROVENANCE, metrics=metrics)
    assert "its history: expected the metrics ['diverged', 'q_loss', 'reward_rates']" in str(
        info.value
    )


# --------------------------------------------------------------------------------------------
# 5. Sizes are bounded before any work grows with them
# --------------------------------------------------------------------------------------------


def test_two_billion_seeds_stop_in_the_memory_check_at_once():
    start = time.monotonic()
    compilation.pair_sharding(1, 2_000_000_000)
    with pytest.raises(experiment.RunError) as info:
        experiment.prepare(ER, tiny_config("ER", num_seeds=2 * 10**9))
    assert time.monotonic() - start < 30  # 150 s of silence before
    assert str(info.value).startswith("config error: buffer_size: the run needs ")


def test_a_huge_grid_is_refused_before_its_points_are_built(monkeypatch):
    def refuse(cfg):
        raise AssertionError("built the points before the memory check")

    monkeypatch.setattr(config, "grid_points", refuse)
    steps = [1e-4 * (i + 1) for i in range(10_000)]
    temps = [0.01 * (i + 1) for i in range(10_000)]
    raw = tiny_config("ER", alpha_adam=steps, softmax_temp=temps)
    with pytest.raises(experiment.RunError, match="for 2 seeds x 100000000 grid points"):
        experiment.prepare(ER, raw)


# --------------------------------------------------------------------------------------------
# 6. Inputs that once ended in tracebacks
# --------------------------------------------------------------------------------------------


def prepare_file(tmp_path, text: bytes):
    path = tmp_path / "bad.json"
    path.write_bytes(text)
    with pytest.raises(experiment.RunError) as info:
        experiment.prepare(ER, str(path))
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{path}: config error: ")
    return line


def test_config_bytes_that_once_raised_are_one_line(tmp_path):
    good = json.dumps(tiny_config("ER"))
    assert "is not UTF-8 text (byte 1: invalid start byte)" in prepare_file(
        tmp_path, b'{\xff"' + good[2:].encode()
    )
    huge = good.replace('"num_seeds": 2', '"num_seeds": ' + "9" * 5000).encode()
    assert "Exceeds the limit (4300 digits)" in prepare_file(tmp_path, huge)
    assert "nested too deeply" in prepare_file(tmp_path, b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    "env_config, expected",
    [
        ({"grid_size": 10**12}, "'grid_size' for ProcMaze: expected an integer of at most"),
        ({"grid_size": 100_000}, "grid_size 100000 gives ProcMaze observations of 40000000000"),
    ],
)
def test_environment_sizes_are_bounded(env_config, expected):
    with pytest.raises(config.ConfigError, match=expected):
        config.validate_config(tiny_config("ER", env_config=env_config), ER)


def test_the_memory_check_counts_evaluation():
    with pytest.raises(experiment.RunError) as info:
        experiment.prepare(ER, tiny_config("ER", eval_batch_size=10**8))
    line = str(info.value)
    assert (
        line.startswith("config error: eval_batch_size: the run needs ") and "evaluation " in line
    )


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_lock_that_is_not_a_file_is_one_line(tmp_path, capsys, no_compilation, kind):
    lock = tmp_path / "run.lock"
    lock.mkdir() if kind == "folder" else os.mkfifo(lock)
    code, lines = main_until_compiled(tmp_path, capsys, tiny_config("ER"), f"--output={lock}"[:-5])
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"--output: {lock} is ")


def test_a_disk_full_at_start_is_one_line_and_leaves_no_lock(tmp_path, capsys, no_compilation):
    with small_filesystem(tmp_path / "disk", "size=256k") as disk:
        fill(disk)
        code, lines = main_until_compiled(
            tmp_path, capsys, tiny_config("ER"), f"--output={disk}/run"
        )
        assert code == 2 and len(lines) == 1, lines
        assert lines[0] == f"--output: cannot write {disk}/run.lock: No space left on device"
        assert not (disk / "run.lock").exists()


def test_a_dollar_in_a_file_name_or_title_is_plotted_as_written(tmp_path, capsys):
    path = tmp_path / "run_$x_$.out"  # mathtext that does not parse: a traceback before
    record = {
        "config": types.SimpleNamespace(seed=0),
        "metrics": {"reward_rates": [np.ones(2), np.zeros(2)], "eval_times": [0, 50]},
    }
    path.write_bytes(pickle.dumps(record))
    png = tmp_path / "plot.png"
    args = ["--data", str(path), "--title", "gain $x_$", "--save", str(png), "--no-show"]
    assert plot_metric.main(args) == 0 and png.stat().st_size > 0


# --------------------------------------------------------------------------------------------
# 7. Silent wrong results
# --------------------------------------------------------------------------------------------


def test_a_key_given_twice_is_one_line(tmp_path):
    text = json.dumps(tiny_config("ER"))[:-1] + ', "alpha_adam": 0.5}'
    assert prepare_file(tmp_path, text.encode()).endswith(
        "config error: alpha_adam: given twice in one object; give it once"
    )


def test_a_run_resumed_across_versions_records_both(tmp_path):
    path, cfg, _, shapes, _ = small_checkpoint(tmp_path)
    newer = {**PROVENANCE, "jax": "0.11.0"}
    restored = checkpoint.load(path, cfg, shapes, newer, accept_version_change=True)
    assert restored.provenance == {**newer, "earlier": [{**PROVENANCE, "until_step": 100}]}
    # the same version going on keeps what came before, and compares as this version
    again = provenance.resumed(restored.provenance, newer, 150)
    assert again == restored.provenance and not provenance.differences(again, newer)


def test_an_out_with_no_seeds_is_one_line(tmp_path):
    path = tmp_path / "empty.out"
    record = {"metrics": {"reward_rates": [np.zeros(0)], "eval_times": [0]}}
    path.write_bytes(pickle.dumps(record))
    with pytest.raises(SystemExit) as info:
        plot_metric.main(["--data", str(path), "--no-show"])
    assert info.value.code == 2


# --------------------------------------------------------------------------------------------
# 8. A compilation cache on a full disk is one line
# --------------------------------------------------------------------------------------------


def test_a_full_compilation_cache_is_one_line(tmp_path, capsys, monkeypatch):
    with small_filesystem(tmp_path / "disk", "size=2m") as disk:
        fill(disk)
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(disk / "cache"))
        try:
            assert compilation.enable_compilation_cache() is None
        finally:
            jax.config.update("jax_enable_compilation_cache", False)
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"warning: compilation cache {disk / 'cache'}: No space left")


def test_a_cache_that_fills_during_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    def full(path, write, keep=None):
        raise files.WriteError(28, "No space left on device", path)

    monkeypatch.setattr(saved_programs, "write_atomic", full)
    folder = tmp_path / "programs"
    for fn in (lambda x: x + 1, lambda x: x * 2, lambda x: x - 3):
        saved_programs.SavedProgramJit(fn, {}, str(folder / "f"))(jnp.int32(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn(
            "Error writing persistent compilation cache entry for 'jit_f': ...", stacklevel=1
        )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning: cannot save the traced program ") and not caught
    jax.config.update("jax_enable_compilation_cache", False)


# --------------------------------------------------------------------------------------------
# Found by the fuzzing (tests/test_fuzz.py), shrunk
# --------------------------------------------------------------------------------------------


def test_found_a_refused_type_whose_name_holds_a_vertical_tab_is_one_line(tmp_path, capsys):
    """A bit flip turned a protocol-0 pickle's newline after `system` into a vertical tab: the
    refused type's name then held it, and the refusal printed as two lines."""
    path = tmp_path / "fuzzed.out"
    path.write_bytes(
        b"(dp0\nVmetrics\np1\n(dp2\nVreward_rates\np3\n(lp4\ncposix\nsystem\x0bp5\n"
        b"(Vtouch /tmp/fuzz-pickle-ran-code\np6\ntp7\nRp8\nassVy\np9\nNs."
    )
    with pytest.raises(SystemExit) as info:
        plot_metric.main(["--data", str(path), "--no-show"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1
    assert "refused type posix.system\\x0bp5" in lines[0]
