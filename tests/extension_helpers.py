"""Helpers of the tests that extend a copy of the project as the README says (a toy environment,
a toy agent), run its scripts there, and check which files the extension touched. No jax."""

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the shipped ER config needs to be small (its environment aside), and a 2 x 2 grid.
TINY = {
    "num_hidden_layers": 1,
    "num_hidden_units": 16,
    "batch_size": 8,
    "buffer_size": 500,
    "eval_steps": 20,
    "eval_batch_size": 4,
}
GRID = {"alpha_adam": [1e-3, 3e-3], "softmax_temp": [0.1, 1.0]}
_GIT = ("git", "-c", "user.name=extension test", "-c", "user.email=test@localhost")


def git(project: Path, *args: str) -> str:
    done = subprocess.run([*_GIT, *args], cwd=project, capture_output=True, text=True, check=True)
    return done.stdout


def copy_project(destination: Path) -> Path:
    """The repository's tracked files (`git ls-files`, as the working tree holds them) copied
    into `destination`, and committed there as a fresh git repository, so that `touched_files`
    sees what a test changes."""
    listed = git(ROOT, "ls-files", "-z").split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # not a file deleted in the working tree
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    git(destination, "init", "-q")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "the project as copied")
    return destination


def touched_files(project: Path) -> list[str]:
    """Every path of the copy that differs from its commit: changed, deleted or new (files that
    `.gitignore` ignores, such as `__pycache__`, aside)."""
    status = git(project, "status", "--porcelain", "--untracked-files=all")
    return sorted(line[3:] for line in status.splitlines())


def replace_once(path: Path, old: str, new: str) -> None:
    """The file at `path` with its one occurrence of `old` replaced by `new`."""
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: {old!r} occurs {text.count(old)} times"
    path.write_text(text.replace(old, new))


def readme_code_blocks(heading: str, language: str = "python") -> list[str]:
    """The ```language blocks of the README's section `heading` (up to the next heading of its
    level or above), in order: the tests run the README's own example."""
    text = (ROOT / "README.md").read_text()
    level = heading.split(" ")[0]
    start = text.index(heading + "\n")
    following = re.search(rf"^#{{1,{len(level)}}} ", text[start + len(heading) :], re.MULTILINE)
    end = start + len(heading) + following.start() if following else len(text)
    return re.findall(rf"```{language}\n(.*?)```", text[start:end], re.DOTALL)


def run_python(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python *args` in the copy, with its own modules first (no PYTHONPATH from outside) and
    the compilation cache and saved programs off. Returns the finished process."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["JAX_COMPILATION_CACHE_DIR"] = ""
    return subprocess.run(
        [sys.executable, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(process: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`process`, which must have exited 0 (else the test fails with its output's end)."""
    assert process.returncode == 0, (process.args, process.stdout[-2000:], process.stderr[-3000:])
    return process


def tiny_config(**changes) -> dict:
    """The shipped ER config made small and short, with `changes`."""
    raw = json.loads((ROOT / "configs" / "ER.json").read_text())
    raw.update(TINY, num_seeds=2, num_steps=200, training_start_time=50, eval_frequency=50)
    return {**raw, "save_frequency": 100, **changes}


def train_grid_and_rank(project: Path, script: str, changes: dict, runs: Path) -> dict:
    """Train `tiny_config` with `changes` on the 2 x 2 `GRID` with the copy's `script` into
    `runs/g` (one `.out` per point), then rank its points with `sweep_summary.py` (which must
    name the best and draw the grid): the first point's record."""
    config = runs / "grid.json"
    config.write_text(json.dumps(tiny_config(**changes, **GRID)))
    ok(run_python(project, script, "-q", "-c", str(config), "-o", str(runs / "g")))
    outs = sorted(runs.glob("g_*.out"))
    picture = runs / "grid.png"
    flags = ["--no-show", "--save", str(picture), "--data", *map(str, outs)]
    summary = ok(run_python(project, "sweep_summary.py", *flags))
    assert "best" in summary.stdout and picture.exists()
    assert len(outs) == 4, outs
    with open(outs[0], "rb") as f:
        return pickle.load(f)


def benchmark_one(project: Path, agent: str, changes: dict, runs: Path) -> dict:
    """The copy's `benchmark.py` on `agent` with the config `changes` (one seed, one timed chunk,
    no second launch): its one result row."""
    path = runs / "changes.json"
    path.write_text(json.dumps(changes))
    output = runs / "benchmark"
    flags = ["--agents", agent, "--seeds", "1", "--chunks", "1", "--no-second-launch"]
    ok(run_python(project, "benchmark.py", *flags, "--config", str(path), "--output", str(output)))
    (row,) = json.loads(output.with_suffix(".json").read_text())["results"]
    return row
