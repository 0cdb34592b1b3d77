"""The run machinery, written once for every agent (SPEC sections 2, 9-11).

One module per concern:
- `experiment`: `run` (the one way into a training run) and the run in order, on one screen;
- `cli`: the command line of every `train_*.py`, which calls `experiment.run`; `flags`: argparse
  with one-line errors;
- `measure`: timing of a run's compiled pieces, for the benchmark and the Figure 4 estimate;
  it builds on `experiment`, which never imports it;
- `definition`: what the machinery needs of an agent's module (`AgentDefinition`);
- `checkpoint`: `<output>.ckpt`, resuming, and its two generations;
- `trackers`: the live curves in TensorBoard and W&B (`tracker_tensorboard`, `tracker_wandb`,
  loaded only when asked for), a listener of the host loop's evaluations;
- `compilation`: the loop jitted once per run, its pairs sharded over the devices, the memory
  check; `saved_programs`: traced programs kept on disk for a second launch;
- `loop`: the training loop of SPEC section 9 (`Agent`, `TrainState`);
- `config`: validation and grids; `schema`: every config key and its role;
- `results`: the `.out` format, reader beside writer, safe to load; `files`: atomic writes and
  the lock on an output prefix; `paths`: every output file's name; `provenance`: what produced
  a file.

Which module imports which, and which import no jax (so that the plotting scripts run wherever
numpy and matplotlib do), is stated once, in the README's code map ("Imports point one way"),
and `tests/test_imports.py` checks it against the code.
"""
