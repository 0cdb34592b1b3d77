"""The run machinery, written once for every agent (SPEC sections 2, 9-11).

One module per concern; imports point down this list:
- `experiment`: `run` (the one way into a training run) and the command line of `train_*.py`;
- `checkpoint`: `<output>.ckpt`, resuming, and its two generations;
- `compilation`: the loop jitted once per run, its pairs sharded over the devices, the memory
  check; `saved_programs`: traced programs kept on disk for a second launch;
- `measure`: timing and FLOPs of a run's compiled pieces (the benchmark and the Figure 4
  estimate);
- `loop`: the training loop of SPEC section 9 (`Agent`, `TrainState`);
- `config`: validation and grids; `schema`: every config key and its role;
- `results`: the `.out` format, reader beside writer, safe to load; `files`: atomic writes, output
  prefixes and the lock on them; `provenance`: what produced a file; `cli`: one-line flag errors.

`schema`, `results`, `files` and `cli` import neither jax nor anything else of the project's
beyond each other, so the plotting scripts run wherever numpy and matplotlib do.
"""
