"""What a run does with its files when things go wrong: an output prefix it cannot use, a lost
`.out`, a second writer, a full disk, a signal, a Ctrl-C, a config that cannot do what it says.
Each stops with one line, or repairs what it can."""

import contextlib
import errno
import os
import signal
import subprocess
import time

import pytest
from helpers import (
    definition,
    fill,
    load_pickle,
    main_in_process,
    small_filesystem,
    start_script,
    tiny_config,
)

import train_ER_DQN
from training import compilation, config, experiment, files, results

FAST = {"training_start_time": 0, "save_params": True}


@pytest.fixture
def no_compilation(monkeypatch):
    """Fails the test if the run gets as far as compiling."""

    def refuse(*args, **kwargs):
        raise AssertionError("compiled before the one-line error")

    monkeypatch.setattr(experiment, "compile_setup", refuse)


def test_an_output_prefix_that_names_a_folder_is_one_line(tmp_path, capsys, no_compilation):
    raw = tiny_config("ER", **FAST)
    code, lines = main_in_process("ER", tmp_path, capsys, raw, f"--output={tmp_path}/runs/")
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith("--output: ") and "names a folder" in lines[0]
    assert f"{tmp_path}/runs/run" in lines[0]  # what to give instead
    assert not list(tmp_path.rglob(".out")) and not list(tmp_path.rglob(".ckpt"))


@pytest.mark.parametrize("suffix", [".out", ".params", ".ckpt"])
def test_a_folder_where_a_file_goes_is_one_line_before_compiling(
    tmp_path, capsys, no_compilation, suffix
):
    (tmp_path / f"run{suffix}").mkdir()
    code, lines = main_in_process(
        "ER", tmp_path, capsys, tiny_config("ER"), f"--output={tmp_path / 'run'}"
    )
    assert code == 2 and lines == [
        f"--output: {tmp_path / 'run'}{suffix} is a folder, where the run writes a file"
    ]


def test_configs_that_cannot_do_what_they_say_are_warned_about(tmp_path, capsys):
    cfg = config.validate_config(
        tiny_config("ER", training_start_time=200, buffer_size=16), definition("ER")
    )
    assert config.warnings(cfg) == [
        "warning: training_start_time 200 >= num_steps 200: no update will ever run",
        "warning: buffer_size 16 < batch_size 32: every batch draws the same items several times",
    ]
    assert config.warnings(config.validate_config(tiny_config("ER"), definition("ER"))) == []
    raw = tiny_config("ER", num_steps=50, training_start_time=50, save_params=False)
    code, lines = main_in_process("ER", tmp_path, capsys, raw, f"--output={tmp_path / 'run'}")
    assert code == 0 and lines == [
        "warning: training_start_time 50 >= num_steps 50: no update will ever run"
    ]


def test_a_finished_run_resumed_without_its_out_writes_it_again(tmp_path):
    """A lost, cut or damaged `.out` of a finished run comes back from the checkpoint, byte for
    byte, without training again."""
    raw = tiny_config("ER", **FAST)
    prefix = str(tmp_path / "run")
    spec = experiment.run(train_ER_DQN.DEFINITION, raw, prefix, quiet=True)
    original = (tmp_path / "run.out").read_bytes()
    for damage in (lambda p: p.unlink(), lambda p: p.write_bytes(original[:100])):
        damage(tmp_path / "run.out")
        with contextlib.suppress(results.ResultsError):  # lost or cut short
            assert len(results.load_out(prefix + ".out")["metrics"]["eval_times"]) < 4
        again = experiment.run(train_ER_DQN.DEFINITION, raw, prefix, resume=True, quiet=True)
        assert again.chunks_run == 0 and again.outs == spec.outs
        assert (tmp_path / "run.out").read_bytes() == original


def test_out_records_what_produced_it(tmp_path):
    raw = tiny_config("ER", num_steps=50, **FAST)
    written = experiment.run(train_ER_DQN.DEFINITION, raw, str(tmp_path / "r"), quiet=True)
    produced_by = results.load_out(written.outs[0])["provenance"]
    assert set(produced_by) == {"project", "jax", "jaxlib", "haiku", "optax", "device"}
    assert produced_by["device"] == "cpu" and len(produced_by["project"]) == 16


def test_ctrl_c_before_training_is_one_line(tmp_path, capsys, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(experiment, "compile_setup", interrupt)
    code, lines = main_in_process(
        "ER", tmp_path, capsys, tiny_config("ER"), f"--output={tmp_path / 'run'}"
    )
    assert code == 130 and len(lines) == 1 and lines[0].startswith("interrupted: ")
    assert not (tmp_path / "run.lock").exists()  # the lock goes with the run


# --------------------------------------------------------------------------------------------
# Runs in their own processes: a lock, signals, a full disk
# --------------------------------------------------------------------------------------------

LONG = tiny_config("ER", num_steps=3000, eval_frequency=50, checkpoint_frequency=1000, **FAST)


def wait_for(path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.time() < deadline, f"no {path}"
        time.sleep(0.01)


def finish(process: subprocess.Popen) -> tuple[int, list[str]]:
    _, stderr = process.communicate(timeout=600)
    return process.returncode, stderr.strip().splitlines()


def test_a_second_writer_stops_at_once_and_a_dead_holder_does_not_block(tmp_path):
    first = start_script("ER", {**LONG, "num_steps": 30000}, tmp_path, "run")
    wait_for(tmp_path / "run.out", first)  # it holds the lock and is training
    code, lines = finish(start_script("ER", LONG, tmp_path, "run"))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"--output: {tmp_path / 'run.lock'} is held by pid {first.pid} on ")
    assert first.poll() is None  # still training: the second process stopped at once
    first.send_signal(signal.SIGKILL)  # the holder dies; its lock file stays behind
    first.communicate()
    assert (tmp_path / "run.lock").exists()
    code, lines = finish(
        start_script("ER", {**LONG, "num_steps": 100}, tmp_path, "run", "--restart")
    )
    assert code == 0, lines  # the stale lock file does not block
    assert not (tmp_path / "run.lock").exists()


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted run that interrupted ones must end as."""
    folder = tmp_path_factory.mktemp("whole")
    assert finish(start_script("ER", LONG, folder, "whole"))[0] == 0
    return folder


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_at_the_chunks_end_and_resume_is_exact(tmp_path, whole, signum):
    stopped = start_script("ER", LONG, tmp_path, "cut")
    wait_for(tmp_path / "cut.out", stopped)
    stopped.send_signal(signum)
    code, lines = finish(stopped)
    name = signal.Signals(signum).name
    assert code == 128 + signum, lines
    assert lines[0] == f"{name}: stopping at the end of this chunk, once its checkpoint is written"
    assert lines[-1].startswith(f"stopped by {name} at step ") and lines[-1].endswith(
        f"of 3000: checkpoint {tmp_path / 'cut.ckpt'} written; go on with --resume"
    )
    step = int(lines[-1].split(" at step ")[1].split()[0])
    assert 0 < step < 3000 and step % 50 == 0  # a chunk's end, not the periodic checkpoint
    assert finish(start_script("ER", LONG, tmp_path, "cut", "--resume"))[0] == 0
    for suffix in (".out", ".params"):
        assert (tmp_path / f"cut{suffix}").read_bytes() == (whole / f"whole{suffix}").read_bytes()


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path, whole):
    with small_filesystem(tmp_path / "disk", "size=2m") as disk:
        run = start_script("ER", LONG, disk, "run")
        wait_for(disk / "run.ckpt", run)
        fill(disk)
        code, lines = finish(run)
        assert code == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"cannot write {disk}/run.") and ": No space left" in lines[0]
        assert lines[0].endswith("is intact: go on with --resume once there is room")
        assert f"the last checkpoint, {disk / 'run.ckpt'} (step " in lines[0]
        os.remove(disk / "filler")
        assert finish(start_script("ER", LONG, disk, "run", "--resume"))[0] == 0
        for suffix in (".out", ".params"):
            assert (disk / f"run{suffix}").read_bytes() == (whole / f"whole{suffix}").read_bytes()


def test_write_errors_name_the_file(tmp_path):
    with pytest.raises(files.WriteError) as info:
        files.write_atomic(str(tmp_path / "missing" / "run.out"), lambda f: None)
    assert info.value.errno == errno.ENOENT and info.value.filename.endswith("missing/run.out")


def test_the_compiled_loops_temporaries_count_before_the_first_chunk(tmp_path, capsys, monkeypatch):
    """Memory enough for the state and the metrics, not for what XLA says the compiled loop
    needs beside them: one line after compiling, before anything runs or is written."""
    raw = tiny_config("ER", **FAST)
    setup = experiment.prepare(train_ER_DQN.DEFINITION, raw)
    state = compilation.training_state_bytes(setup.shapes)[0]
    just_enough = state + setup.metrics + setup.evaluation + 1  # the evaluation fits too
    monkeypatch.setattr(compilation, "available_memory", lambda devices: (just_enough, "a test"))
    code, lines = main_in_process("ER", tmp_path, capsys, raw, f"--output={tmp_path / 'run'}")
    assert code == 2 and len(lines) == 1, lines
    assert (
        "the compiled loop's temporaries" in lines[0]
        and "more than the 0.0 GB of a test" in lines[0]
    )
    assert not (tmp_path / "run.out").exists() and not (tmp_path / "run.ckpt").exists()
    assert compilation.metrics_bytes(10, 2, 3, 2) == 2 * 10 * 2 * 3 * (4 * 3 + 1)


def test_output_files_get_ordinary_permissions(tmp_path):
    """Written through a temporary file, yet readable like any new file (not mkstemp's 0600)."""
    path = tmp_path / "run.out"
    files.write_pickle_atomic(str(path), {"metrics": {}})
    assert path.stat().st_mode & 0o777 == 0o666 & ~files._UMASK
    assert load_pickle(str(path)) == {"metrics": {}}
    assert os.listdir(tmp_path) == ["run.out"]  # no temporary file left behind
