"""The suite's fixtures and hooks; what tests share otherwise is in `helpers.py`."""

import os

import pytest
from xdist.scheduler import LoadScopeScheduling

# The tests compile afresh: no persistent compilation cache or saved programs of other runs.
os.environ["JAX_COMPILATION_CACHE_DIR"] = ""

import background  # noqa: E402
import slurm_jobs  # noqa: E402
from helpers import QUICK_PIPELINE, run_quick_driver, tiny_config  # noqa: E402

import environments  # noqa: E402
import train_ER_DQN  # noqa: E402
from training import compilation, config  # noqa: E402


def pytest_configure(config):
    """A parallel session (`-n N`, the default: pyproject.toml) has its controller host the
    SLURM background work; this folder carries it to the workers (`tests/background.py`)."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        background.host()


def pytest_collection_finish(session):
    """The SLURM job of the time-limit test and the driver's scenarios start with the session:
    they need minutes, nearly all of them waiting, so they run while the rest of the suite does
    (`tests/slurm_jobs.py`). In a parallel session the controller starts them instead, once the
    first worker has collected (below)."""
    if background.hosted_elsewhere():
        return
    if any(item.get_closest_marker("slurm_background") for item in session.items):
        tests = {item.name for item in session.items}
        slurm_jobs.start_background(tiny_config("ER", **slurm_jobs.TIME_LIMIT_RUN), tests)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """The controller of a parallel session: a worker's collection is the session's selection."""
    if not background.started():
        tests = {nodeid.split("::")[-1].split("[")[0] for nodeid in ids}
        slurm_jobs.start_background(tiny_config("ER", **slurm_jobs.TIME_LIMIT_RUN), tests)
        background.mark_started()


def pytest_sessionfinish(session):
    slurm_jobs.cancel_background()
    background.remove()


# The order in which the two workers take the modules (`pytest_xdist_make_scheduler`): the
# longest first (measured with --durations), so that neither worker is left with a long one at
# the end; the SLURM modules last, since they wait for work started with the session.
LONGEST_FIRST = (
    "test_checkpoint",
    "test_files",
    "test_cli",
    "test_run",
    "test_figure4",
    "test_compilation",
    "test_grid",
    "test_extension_agent",
    "test_trackers",
    "test_reliability",
    "test_saved_programs",
    "test_extension_environment",
)
WAITING_LAST = ("test_slurm", "test_slurm_driver")
# Modules run by one worker as one: they share the session's quick pipeline, built once.
SAME_WORKER = {"test_figure4_comparison": "test_figure4"}


def module_of(nodeid: str) -> str:
    return os.path.basename(nodeid.split("::", 1)[0]).removesuffix(".py")


def rank(scope: str) -> tuple:
    """Where a work unit of the scheduler comes in `LONGEST_FIRST`, then the rest, then
    `WAITING_LAST`."""
    module = module_of(scope)
    if module in LONGEST_FIRST:
        return (0, LONGEST_FIRST.index(module))
    return (2, WAITING_LAST.index(module)) if module in WAITING_LAST else (1, 0)


class ModulesInOrder(LoadScopeScheduling):
    """xdist's `--dist loadscope` (a module's tests on one worker, so that its module fixtures
    are built once), with `SAME_WORKER`'s modules as one and the modules taken in `rank`'s
    order rather than by their number of tests."""

    def _split_scope(self, nodeid: str) -> str:
        module = module_of(nodeid)
        if module in SAME_WORKER:
            return nodeid.split("::", 1)[0].replace(module, SAME_WORKER[module])
        return super()._split_scope(nodeid)

    def _assign_work_unit(self, node) -> None:
        self.workqueue.move_to_end(min(self.workqueue, key=rank), last=False)
        super()._assign_work_unit(node)


def pytest_xdist_make_scheduler(config, log):
    return ModulesInOrder(config, log)


@pytest.fixture(scope="session")
def driver_cache(tmp_path_factory):
    """One compilation cache for the session's driver runs: later ones load the programs."""
    return str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture(scope="session")
def quick_pipeline(tmp_path_factory, driver_cache):
    """All four stages of the quick pipeline, inline, once: (its --out-dir, the process)."""
    out = tmp_path_factory.mktemp("quick_pipeline") / "inline"
    process, _ = run_quick_driver(*QUICK_PIPELINE, "--out-dir", str(out), cache_dir=driver_cache)
    return out, process


@pytest.fixture(scope="session")
def er_run():
    """ER's tiny config on 3 seeds, compiled once for the session: (agent, env, cfg, run)."""
    raw = tiny_config("ER", num_seeds=3)
    cfg = config.validate_config(raw, train_ER_DQN.DEFINITION)
    env = environments.make_environment(cfg["environment"], cfg["env_config"])
    agent = train_ER_DQN.build_agent(cfg, env)
    return agent, env, cfg, compilation.compile_run(agent, env, cfg)
