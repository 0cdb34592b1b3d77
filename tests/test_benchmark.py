"""benchmark.py's arithmetic, table and code paths (the measurements themselves are not tests)."""

import json
import os

import numpy as np

import benchmark


def test_markdown_row_compares_with_the_reference():
    result = {
        "agent": "ER",
        "seeds": 8,
        "steps_per_s": 824.0,
        "gflops": 100.0,
        "roofline": 0.5,
        "peak_rss_gb": 0.6,
        "compile_s": 7.0,
        "xla_compile_s": 5.5,
        "second_launch_compile_s": 1.5,
        "second_launch_xla_compile_s": 0.2,
    }
    table = benchmark.markdown([result], "header")
    row = table.splitlines()[-1]
    assert row.startswith("| ER | 8 | 824 | 412 | 2.00 |")
    assert "| 7.0 (5.5) | 1.5 (0.2) | 15 |" in row
    assert "| 0.60 | 1.5 |" in row  # peak RSS next to the reference's 1.5 GB at 8 seeds


def test_overheads_write_and_time_a_checkpoint_of_the_shipped_state(tmp_path):
    """The code path of `--overheads` (its checkpoint of ER's shipped state at one seed), not
    its timings."""
    result = benchmark.measure_overheads("ER", 1, 0, str(tmp_path), "float32")
    # the replay buffer dominates: 100 000 transitions of packed observation bits and more
    assert result["checkpoint_mb"] > 1.0 and result["checkpoint_write_s"] > 0
    assert sorted(os.listdir(tmp_path)) == ["benchmark.ckpt", "benchmark.ckpt.prev"]
    with np.load(tmp_path / "benchmark.ckpt") as archive:  # the run's own config
        assert json.loads(str(archive["meta"]))["config"]["matmul_precision"] == "float32"
