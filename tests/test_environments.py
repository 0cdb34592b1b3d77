"""Tests of environments.py: maze generator properties, hand-checked steps, spontaneous-event
frequencies, observation layout, config validation, and jit/vmap.

Tests that hold for every environment are parametrized over `ENVIRONMENTS` (the one list), so a
new environment is tested without naming it here: at its constructor defaults, or at the
configuration `CONFIGS` gives it. Compiling dominates the cost, so every environment
configuration is built once (``envs``) and its jitted functions are shared by all tests;
batched tests reuse a few batch sizes.
"""

import collections
import functools
import inspect
import math
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_registry import AGENTS
from environments import (
    ENVIRONMENT_CLASSES,
    ENVIRONMENTS,
    STATE_TYPES,
    ButtonGrid,
    ButtonGridState,
    Environment,
    OpenGrid,
    OpenGridState,
    PanFlute,
    PanFluteState,
    ProcMaze,
    ProcMazeState,
    make_environment,
)
from training import (
    experiment,
    saved_programs,  # noqa: F401  (registers the state types with jax.export)
)

NOOP, UP, LEFT, DOWN, RIGHT = range(5)
NUM_MAZES = 200  # batch size of the maze property tests and the jit/vmap test
NUM_DRAWS = 200_000  # batch size of the statistical tests


def numpy_outputs(fn):
    """``fn`` with its outputs as numpy arrays, so the checks run no (compiling) jax ops."""
    return lambda *args: jax.tree.map(np.asarray, fn(*args))


@functools.cache
def envs(name, **config):
    """The environment and its jitted functions: ``reset``/``step`` for one environment,
    ``vreset``/``vstep`` vmapped over every argument. Outputs are numpy arrays."""
    env = make_environment(name, config)
    return SimpleNamespace(
        env=env,
        reset=numpy_outputs(jax.jit(env.reset)),
        step=numpy_outputs(jax.jit(env.step)),
        vreset=numpy_outputs(jax.jit(jax.vmap(env.reset))),
        vstep=numpy_outputs(jax.jit(jax.vmap(env.step))),
    )


def keys(n, seed=0):
    return jax.random.split(jax.random.key(seed), n)


def tile(state, n):
    return jax.tree.map(lambda x: np.broadcast_to(x, (n, *np.shape(x))), state)


def actions(action, n):
    return np.full((n,), action, np.int32)


def assert_binomial(count, n, p, sigmas=5.0):
    """``count`` successes out of ``n`` are consistent with probability ``p``."""
    mean = n * p
    std = math.sqrt(n * p * (1 - p))
    assert abs(count - mean) <= sigmas * std, (count, mean, std)


def i32(*values):
    return np.array(values, np.int32)


def assert_states_equal(a, b):
    assert type(a) is type(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------------------------
# ProcMaze generator
# --------------------------------------------------------------------------------------------


@functools.cache
def maze_batch(grid_size, seed=0):
    return envs("ProcMaze", grid_size=grid_size).vreset(keys(NUM_MAZES, seed))


def open_components(open_cells):
    """Number of 4-connected components of the open cells (flood fill)."""
    G = open_cells.shape[0]
    seen = np.zeros_like(open_cells)
    components = 0
    for start in zip(*np.nonzero(open_cells), strict=True):
        if seen[start]:
            continue
        components += 1
        seen[start] = True
        queue = collections.deque([start])
        while queue:
            r, c = queue.popleft()
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < G and 0 <= nc < G and open_cells[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
    return components


def open_neighbour_counts(open_cells):
    """Per cell, the number of open 4-neighbours (batched over leading axes)."""
    padded = np.pad(open_cells, [(0, 0)] * (open_cells.ndim - 2) + [(1, 1), (1, 1)]).astype(int)
    return (
        padded[..., :-2, 1:-1]
        + padded[..., 2:, 1:-1]
        + padded[..., 1:-1, :-2]
        + padded[..., 1:-1, 2:]
    )


@pytest.mark.parametrize("grid_size", range(2, 11))
def test_maze_structure(grid_size):
    state, _ = maze_batch(grid_size)
    walls = state.walls
    assert walls.shape == (NUM_MAZES, grid_size, grid_size) and walls.dtype == np.bool_
    open_cells = ~walls
    num_open = open_cells.sum(axis=(1, 2))
    assert (num_open >= 3).all()
    # Every open cell reachable from every other.
    assert all(open_components(cells) == 1 for cells in open_cells)
    # A connected set with num_open - 1 adjacent open pairs is a tree: no loops, no open 2x2.
    pairs = (open_cells[:, 1:, :] & open_cells[:, :-1, :]).sum(axis=(1, 2)) + (
        open_cells[:, :, 1:] & open_cells[:, :, :-1]
    ).sum(axis=(1, 2))
    np.testing.assert_array_equal(pairs, num_open - 1)
    blocks = (
        open_cells[:, 1:, 1:]
        & open_cells[:, :-1, 1:]
        & open_cells[:, 1:, :-1]
        & open_cells[:, :-1, :-1]
    )
    assert not blocks.any()
    # The search ran to completion: a wall next to exactly one open cell would still have
    # been expandable.
    assert not (walls & (open_neighbour_counts(open_cells) == 1)).any()


@pytest.mark.parametrize("grid_size", range(2, 11))
def test_maze_player_and_goal_on_open_cells(grid_size):
    state, obs = maze_batch(grid_size)
    index = np.arange(NUM_MAZES)
    for position in (state.player, state.goal):
        assert position.dtype == np.int32 and position.shape == (NUM_MAZES, 2)
        assert ((position >= 0) & (position < grid_size)).all()
        assert not state.walls[index, position[:, 0], position[:, 1]].any()
    assert obs.dtype == np.bool_ and obs.shape == (NUM_MAZES, 4 * grid_size**2)


def test_maze_player_and_goal_uniform_and_independent():
    reset = envs("ProcMaze", grid_size=4).vreset
    batches = [reset(keys(NUM_MAZES, seed))[0] for seed in range(100, 150)]
    state = jax.tree.map(lambda *x: np.concatenate(x), *batches)
    open_cells = ~state.walls
    num_open = open_cells.sum(axis=(1, 2))
    # Drawn independently and uniformly from the open cells, player and goal coincide with
    # probability 1 / num_open in each maze.
    same = (state.player == state.goal).all(axis=-1)
    expected = (1.0 / num_open).sum()
    assert abs(same.sum() - expected) <= 5 * math.sqrt(expected)
    # Each cell holds the player (goal) as often as it is open, weighted by 1 / num_open.
    weight = (open_cells / num_open[:, None, None]).sum(axis=0)
    for position in (state.player, state.goal):
        visits = np.zeros((4, 4))
        np.add.at(visits, (position[:, 0], position[:, 1]), 1)
        assert np.all(np.abs(visits - weight) <= 5 * np.sqrt(weight) + 1)
    # The start cell is uniform, so the maze distribution is symmetric: the four corners are
    # open about equally often.
    corners = open_cells[:, [0, 0, 3, 3], [0, 3, 0, 3]].sum(axis=0)
    assert corners.max() - corners.min() <= 5 * math.sqrt(2 * corners.mean())


@pytest.mark.parametrize("grid_size", [2, 4, 10])
def test_maze_same_key_same_maze(grid_size):
    state, obs = maze_batch(grid_size)
    # The same keys in another order give the same mazes in that order.
    order = np.random.default_rng(0).permutation(NUM_MAZES)
    again, again_obs = envs("ProcMaze", grid_size=grid_size).vreset(keys(NUM_MAZES)[order])
    for a, b in zip(state, again, strict=True):
        np.testing.assert_array_equal(a[order], np.asarray(b))
    np.testing.assert_array_equal(obs[order], again_obs)


# Distinct mazes among 200 draws. G = 4 has only about 200 mazes in all (about 96 distinct
# expected among 200 draws); from G = 5 on repeats are rare.
MIN_DISTINCT = {4: 70, 5: 180, 6: 190, 7: 190, 8: 190, 9: 190, 10: 190}


@pytest.mark.parametrize("grid_size", range(4, 11))
def test_maze_different_keys_different_mazes(grid_size):
    state, _ = maze_batch(grid_size)
    distinct = {walls.tobytes() for walls in state.walls}
    assert len(distinct) >= MIN_DISTINCT[grid_size]
    other, _ = maze_batch(grid_size, seed=1)
    assert (other.walls != state.walls).any(axis=(1, 2)).mean() >= 0.9


def test_small_mazes_vary():
    # G = 2 has four mazes (three open cells in an L); all should turn up.
    state, _ = maze_batch(2)
    assert len({walls.tobytes() for walls in state.walls}) == 4
    assert (state.walls.sum(axis=(1, 2)) == 1).all()
    state, _ = maze_batch(3)
    assert len({walls.tobytes() for walls in state.walls}) >= 15


# --------------------------------------------------------------------------------------------
# ProcMaze step
# --------------------------------------------------------------------------------------------

# 4x4 maze used by the hand-checked tests ('#' wall, '.' open).
MAZE = np.array([[c == "#" for c in row] for row in ["..#.", ".##.", "....", "#.#."]])


def maze_state(player, goal=(3, 3)):
    return ProcMazeState(player=i32(*player), goal=i32(*goal), walls=MAZE)


def deterministic_maze():
    return envs("ProcMaze", grid_size=4, spontaneous_termination=False)


@pytest.mark.parametrize(
    ("player", "action", "expected"),
    [
        ((0, 0), NOOP, (0, 0)),
        ((0, 0), UP, (0, 0)),  # clipped at the top edge
        ((0, 0), LEFT, (0, 0)),  # clipped at the left edge
        ((0, 0), DOWN, (1, 0)),
        ((0, 0), RIGHT, (0, 1)),
        ((0, 1), RIGHT, (0, 1)),  # wall at (0, 2)
        ((0, 1), DOWN, (0, 1)),  # wall at (1, 1)
        ((2, 1), UP, (2, 1)),  # wall at (1, 1)
        ((2, 1), DOWN, (3, 1)),
        ((2, 0), DOWN, (2, 0)),  # wall at (3, 0)
        ((2, 3), UP, (1, 3)),
        ((3, 1), DOWN, (3, 1)),  # clipped at the bottom edge
        ((2, 3), RIGHT, (2, 3)),  # clipped at the right edge
    ],
)
def test_maze_moves(player, action, expected):
    fns = deterministic_maze()
    state, obs, reward, terminal, info = fns.step(keys(1)[0], maze_state(player), action)
    np.testing.assert_array_equal(state.player, expected)
    np.testing.assert_array_equal(state.goal, (3, 3))
    np.testing.assert_array_equal(state.walls, MAZE)
    assert reward.dtype == np.float32 and reward.shape == () and float(reward) == -1.0
    assert terminal.dtype == np.bool_ and terminal.shape == () and not bool(terminal)
    assert info == {}
    np.testing.assert_array_equal(obs, fns.env.get_observation(state))


def test_maze_terminal_is_checked_before_moving():
    step = deterministic_maze().step
    key = keys(1)[0]
    # Stepping onto the goal is not terminal ...
    state, _, reward, terminal, _ = step(key, maze_state((2, 3)), DOWN)
    np.testing.assert_array_equal(state.player, (3, 3))
    assert not bool(terminal) and float(reward) == -1.0
    # ... the step taken from the goal is, whatever the action, with reward -1.
    for action in range(5):
        _, _, reward, terminal, _ = step(key, state, action)
        assert bool(terminal) and float(reward) == -1.0
    # Leaving the goal is still terminal: the check uses the position before the move.
    moved, _, _, terminal, _ = step(key, state, UP)
    np.testing.assert_array_equal(moved.player, (2, 3))
    assert bool(terminal)


def test_maze_spontaneous_probability_formula():
    assert ProcMaze(grid_size=4).spontaneous_probability == pytest.approx(0.01)
    assert ProcMaze(grid_size=3).spontaneous_probability == pytest.approx(0.1 / 7)
    assert ProcMaze(grid_size=10).spontaneous_probability == pytest.approx(0.1 / 55)
    for G in range(2, 12):
        most_open = (G + 1) * math.ceil(G / 2) - G % 2
        assert ProcMaze(grid_size=G).spontaneous_probability == pytest.approx(0.1 / most_open)
    assert ProcMaze(spontaneous_termination=False).spontaneous_probability == 0.0
    assert isinstance(ProcMaze().spontaneous_probability, float)


def test_maze_deterministic_without_spontaneous_termination():
    fns = deterministic_maze()
    state = tile(maze_state((0, 0)), NUM_MAZES)
    new, _, reward, terminal, _ = fns.vstep(keys(NUM_MAZES), state, actions(DOWN, NUM_MAZES))
    assert not terminal.any() and (reward == -1.0).all()
    assert (new.player == i32(1, 0)).all()


@pytest.mark.parametrize("teleport", [True, False])
def test_maze_spontaneous_frequency(teleport):
    config = {} if teleport else {"teleport_on_termination": False}
    fns = envs("ProcMaze", grid_size=4, **config)
    n = NUM_DRAWS
    state = tile(maze_state((0, 0)), n)
    step_keys = keys(n, seed=3)
    new, _, _, terminal, _ = fns.vstep(step_keys, state, actions(RIGHT, n))
    on_goal = (new.player == i32(3, 3)).all(axis=-1)
    if teleport:
        assert not terminal.any()
        events = on_goal
        # Without an event the move happens as usual.
        assert (new.player[~on_goal] == (0, 1)).all()
    else:
        assert not on_goal.any()
        events = terminal
        assert (new.player == (0, 1)).all()
    assert_binomial(int(events.sum()), n, fns.env.spontaneous_probability)
    # The same step keys give the same draws.
    again = fns.vstep(step_keys, state, actions(RIGHT, n))
    assert_states_equal(new, again[0])
    np.testing.assert_array_equal(terminal, again[3])


def test_maze_observation_layout():
    env = ProcMaze(grid_size=4)
    state = maze_state((2, 1), goal=(0, 3))
    obs = np.asarray(env.get_observation(state))
    assert obs.dtype == np.bool_ and obs.shape == (64,) and env.observation_size == 64
    G, C = 4, 4
    planes = obs.reshape(G, G, C)
    expected_player = np.zeros((G, G), bool)
    expected_player[2, 1] = True
    expected_goal = np.zeros((G, G), bool)
    expected_goal[0, 3] = True
    np.testing.assert_array_equal(planes[..., 0], expected_player)
    np.testing.assert_array_equal(planes[..., 1], expected_goal)
    np.testing.assert_array_equal(planes[..., 2], MAZE)
    np.testing.assert_array_equal(planes[..., 3], ~MAZE)
    # Explicit bit positions (r * G + c) * C + ch.
    assert obs[(2 * G + 1) * C + 0] and obs[(0 * G + 3) * C + 1]
    assert obs[(0 * G + 2) * C + 2] and not obs[(0 * G + 2) * C + 3]
    assert not obs[(0 * G + 1) * C + 2] and obs[(0 * G + 1) * C + 3]
    assert obs.sum() == 1 + 1 + G * G
    assert ProcMaze(grid_size=10).observation_size == 400
    assert env.num_actions() == 5


# --------------------------------------------------------------------------------------------
# OpenGrid
# --------------------------------------------------------------------------------------------


def test_open_grid_reset():
    fns = envs("OpenGrid", grid_size=4)
    n = NUM_DRAWS
    state, obs = fns.vreset(keys(n))
    assert (state.goal == i32(3, 3)).all()
    player = state.player
    for count in np.bincount(player[:, 0] * 4 + player[:, 1], minlength=16):
        assert_binomial(int(count), n, 1 / 16)
    assert obs.dtype == np.bool_ and obs.shape == (n, 16)
    np.testing.assert_array_equal(np.flatnonzero(obs[0]), [player[0, 0] * 4 + player[0, 1]])
    assert (obs.sum(axis=1) == 1).all()
    assert fns.env.observation_size == 16 and fns.env.num_actions() == 5


def test_open_grid_step():
    fns = envs("OpenGrid", grid_size=3, spontaneous_termination=False)
    key = keys(1)[0]
    goal = i32(2, 2)
    cases = [((0, 0), UP, (0, 0)), ((0, 0), LEFT, (0, 0)), ((1, 1), DOWN, (2, 1))]
    cases += [((1, 2), RIGHT, (1, 2)), ((2, 1), RIGHT, (2, 2)), ((1, 1), NOOP, (1, 1))]
    cases += [((1, 1), UP, (0, 1)), ((1, 1), LEFT, (1, 0))]
    for player, action, expected in cases:
        state = OpenGridState(player=i32(*player), goal=goal)
        new, obs, reward, terminal, _ = fns.step(key, state, action)
        np.testing.assert_array_equal(new.player, expected)
        assert float(reward) == -1.0 and not bool(terminal)
        np.testing.assert_array_equal(np.flatnonzero(obs), [expected[0] * 3 + expected[1]])
    _, _, reward, terminal, _ = fns.step(key, OpenGridState(player=goal, goal=goal), UP)
    assert bool(terminal) and float(reward) == -1.0


@pytest.mark.parametrize("teleport", [True, False])
def test_open_grid_spontaneous_frequency(teleport):
    config = {} if teleport else {"teleport_on_termination": False}
    fns = envs("OpenGrid", grid_size=4, **config)
    assert fns.env.spontaneous_probability == pytest.approx(0.025)
    assert OpenGrid(spontaneous_termination=False).spontaneous_probability == 0.0
    n = NUM_DRAWS
    state = tile(OpenGridState(player=i32(0, 0), goal=i32(3, 3)), n)
    new, _, _, terminal, _ = fns.vstep(keys(n), state, actions(NOOP, n))
    on_goal = (new.player == 3).all(axis=-1)
    events = on_goal if teleport else terminal
    assert not (terminal if teleport else on_goal).any()
    assert_binomial(int(events.sum()), n, fns.env.spontaneous_probability)


# --------------------------------------------------------------------------------------------
# ButtonGrid
# --------------------------------------------------------------------------------------------


def button_state(player, buttons, on):
    return ButtonGridState(
        player=i32(*player),
        buttons=np.array(buttons, np.int32),
        button_on=np.array(on, np.bool_),
    )


def deterministic_buttons():
    return envs("ButtonGrid", grid_size=4, num_buttons=2, spontaneous_reset=False)


def test_button_grid_reset():
    fns = envs("ButtonGrid", grid_size=4, num_buttons=3)
    n = NUM_DRAWS
    state, obs = fns.vreset(keys(n))
    buttons = state.buttons
    assert buttons.shape == (n, 3, 2) and buttons.dtype == np.int32
    assert ((buttons >= 0) & (buttons < 4)).all()
    cells = buttons[..., 0] * 4 + buttons[..., 1]
    assert (cells[:, 0] != cells[:, 1]).all() and (cells[:, 1] != cells[:, 2]).all()
    assert (cells[:, 0] != cells[:, 2]).all()
    assert not state.button_on.any()
    # Uniform without replacement: each button index is in each cell with probability 1/16,
    # and each ordered pair of distinct cells is equally likely for buttons 0 and 1.
    for i in range(3):
        for count in np.bincount(cells[:, i], minlength=16):
            assert_binomial(int(count), n, 1 / 16)
    pairs = np.bincount(cells[:, 0] * 16 + cells[:, 1], minlength=256).reshape(16, 16)
    assert (np.diag(pairs) == 0).all()
    for count in pairs[~np.eye(16, dtype=bool)]:
        assert_binomial(int(count), n, 1 / 240)
    player = state.player
    for count in np.bincount(player[:, 0] * 4 + player[:, 1], minlength=16):
        assert_binomial(int(count), n, 1 / 16)
    assert obs.dtype == np.bool_ and obs.shape == (n, 48)
    # Player bit plus one "off" bit per button.
    planes = obs[:1000].reshape(1000, 4, 4, 3)
    assert (planes[..., 0].sum(axis=(1, 2)) == 1).all()
    assert (planes[..., 2].sum(axis=(1, 2)) == 3).all() and not planes[..., 1].any()


def test_button_grid_toggles_only_when_moving_onto_a_button():
    step = deterministic_buttons().step
    key = keys(1)[0]
    buttons = [[0, 0], [2, 2]]

    def go(state, action):
        new, _, reward, terminal, _ = step(key, state, action)
        assert float(reward) == 0.0 and not bool(terminal)
        np.testing.assert_array_equal(new.buttons, buttons)
        return new

    # Moving onto an off button turns it on.
    state = go(button_state((2, 1), buttons, [False, False]), RIGHT)
    np.testing.assert_array_equal(state.player, (2, 2))
    np.testing.assert_array_equal(state.button_on, [False, True])
    # Standing still on it does not toggle.
    state = go(state, NOOP)
    np.testing.assert_array_equal(state.button_on, [False, True])
    # Leaving does not toggle; coming back turns it off.
    state = go(state, DOWN)
    np.testing.assert_array_equal(state.player, (3, 2))
    np.testing.assert_array_equal(state.button_on, [False, True])
    state = go(state, UP)
    np.testing.assert_array_equal(state.button_on, [False, False])
    # Bumping into the edge while standing on a button is not a move.
    corner = button_state((0, 0), buttons, [False, True])
    for action in (NOOP, UP, LEFT):
        state = go(corner, action)
        np.testing.assert_array_equal(state.player, (0, 0))
        np.testing.assert_array_equal(state.button_on, [False, True])
    state = go(button_state((1, 0), buttons, [False, True]), UP)
    np.testing.assert_array_equal(state.button_on, [True, True])


def test_button_grid_success_rewards_then_resets():
    fns = deterministic_buttons()
    key = keys(1)[0]
    buttons = [[0, 0], [2, 2]]
    # Turning the last button on gives no reward yet: success is checked before the move.
    state, _, reward, _, _ = fns.step(key, button_state((1, 0), buttons, [False, True]), UP)
    assert float(reward) == 0.0
    np.testing.assert_array_equal(state.button_on, [True, True])
    # The next step pays 1 and replaces the environment by a fresh reset one.
    new, obs, reward, terminal, _ = fns.step(key, state, DOWN)
    assert float(reward) == 1.0 and reward.dtype == np.float32 and not bool(terminal)
    assert not new.button_on.any()
    assert len({tuple(b) for b in new.buttons.tolist()}) == 2
    np.testing.assert_array_equal(obs, fns.env.get_observation(new))
    # Over many keys the fresh layouts vary: 240 ordered pairs of cells, about 146 of them
    # expected among 200 draws; and the player is not simply the moved one.
    n = NUM_MAZES
    new, _, reward, _, _ = fns.vstep(keys(n), tile(state, n), actions(DOWN, n))
    assert (reward == 1.0).all() and not new.button_on.any()
    assert len({b.tobytes() for b in new.buttons}) > 110
    assert (new.player != i32(1, 0)).any(axis=-1).mean() > 0.8


@pytest.mark.parametrize("activate", [True, False])
def test_button_grid_spontaneous_frequency(activate):
    config = {} if activate else {"activate_on_reset": False}
    fns = envs("ButtonGrid", grid_size=4, num_buttons=3, **config)
    assert fns.env.spontaneous_probability == pytest.approx(1 / 160)
    n = NUM_DRAWS
    # Player away from the buttons and standing still, one button on: nothing changes unless
    # the spontaneous event happens (all on, or a reset that turns everything off).
    state = button_state((3, 3), [[0, 0], [1, 1], [2, 2]], [True, False, False])
    new, _, reward, terminal, _ = fns.vstep(keys(n, seed=11), tile(state, n), actions(NOOP, n))
    assert not reward.any() and not terminal.any()
    on = new.button_on
    moved = (new.buttons != state.buttons).any(axis=(1, 2))
    if activate:
        events = on.all(axis=1)
        assert not moved.any()
    else:
        events = ~on.any(axis=1)
        assert moved[events].mean() > 0.99 and not moved[~events].any()
    assert (on[~events] == [True, False, False]).all()
    assert_binomial(int(events.sum()), n, fns.env.spontaneous_probability)

    if activate:
        # After a spontaneous activation every button is on, so the next step pays 1 and
        # gives a fresh layout with every button off.
        again, _, reward, _, _ = fns.vstep(keys(n, seed=12), new, actions(NOOP, n))
        np.testing.assert_array_equal(reward == 1.0, events)
        assert not again.button_on[events].any()


def test_button_grid_observation_layout():
    env = ButtonGrid(grid_size=4, num_buttons=2)
    state = button_state((3, 1), [[0, 2], [2, 3]], [True, False])
    obs = np.asarray(env.get_observation(state))
    G, C = 4, 3
    assert obs.dtype == np.bool_ and obs.shape == (48,) and env.observation_size == 48
    assert set(np.flatnonzero(obs)) == {
        (3 * G + 1) * C + 0,
        (0 * G + 2) * C + 1,
        (2 * G + 3) * C + 2,
    }
    # The player standing on a button shows in both channels.
    obs = np.asarray(env.get_observation(button_state((2, 3), [[0, 2], [2, 3]], [False, True])))
    assert set(np.flatnonzero(obs)) == {(2 * G + 3) * C, (2 * G + 3) * C + 1, 2 * C + 2}
    assert ButtonGrid().observation_size == 300
    assert ButtonGrid().spontaneous_probability == pytest.approx(1e-3)
    assert ButtonGrid(spontaneous_reset=False).spontaneous_probability == 0.0
    assert env.num_actions() == 5


# --------------------------------------------------------------------------------------------
# PanFlute
# --------------------------------------------------------------------------------------------


def flute(*pipes):
    """A state from per-pipe lists, first cell first."""
    return PanFluteState(pipes=np.array([c for pipe in pipes for c in pipe], np.bool_))


def test_pan_flute_reset_and_sizes():
    env = PanFlute()
    state, obs = env.reset(keys(1)[0])
    assert obs.dtype == np.bool_ and obs.shape == (15,) and not obs.any()
    assert state.pipes.shape == (15,) and not state.pipes.any()
    assert env.observation_size == 15 and env.num_actions() == 5
    assert env.spontaneous_probability == pytest.approx(1 / 25)
    assert PanFlute(num_pipes=3, spontaneous_reward=False).spontaneous_probability == 0.0


def test_pan_flute_shift_and_reward_order():
    step = envs("PanFlute", num_pipes=3, spontaneous_reward=False).step
    key = keys(1)[0]
    # Every last cell on: reward 1 from the state before the shift, which drops them.
    state, obs, reward, terminal, _ = step(key, flute([1], [0, 1], [0, 0, 1]), 2)
    assert float(reward) == 1.0 and reward.dtype == np.float32 and not bool(terminal)
    np.testing.assert_array_equal(state.pipes, flute([0], [0, 0], [1, 0, 0]).pipes)
    np.testing.assert_array_equal(obs, state.pipes)
    # Last cells all on only *after* the shift: no reward on this step, reward on the next.
    state, _, reward, _, _ = step(key, flute([0], [1, 0], [0, 1, 0]), 0)
    assert float(reward) == 0.0
    np.testing.assert_array_equal(state.pipes, flute([1], [0, 1], [0, 0, 1]).pipes)
    _, _, reward, _, _ = step(key, state, 1)
    assert float(reward) == 1.0
    # Shifting moves each pipe's cells toward its end without leaking into the next pipe.
    state, _, _, _, _ = step(key, flute([1], [1, 1], [1, 1, 0]), 1)
    np.testing.assert_array_equal(state.pipes, flute([0], [1, 1], [0, 1, 1]).pipes)


def test_pan_flute_playing_the_tune():
    # Blowing pipe 2, then 1, then 0 lines all last cells up on the third step, paid on the
    # fourth.
    step = envs("PanFlute", num_pipes=3, spontaneous_reward=False).step
    state, _ = PanFlute(num_pipes=3).reset(keys(1)[0])
    rewards = []
    for action in [2, 1, 0, 0]:
        state, _, reward, _, _ = step(keys(1)[0], state, action)
        rewards.append(float(reward))
    assert rewards == [0.0, 0.0, 0.0, 1.0]


def test_pan_flute_spontaneous_frequency():
    fns = envs("PanFlute", num_pipes=5)
    n = NUM_DRAWS
    state = PanFluteState(pipes=np.zeros((n, 15), np.bool_))
    new, _, reward, _, _ = fns.vstep(keys(n), state, actions(0, n))
    assert not reward.any()
    pipes = new.pipes
    last = np.cumsum(np.arange(1, 6)) - 1
    events = pipes[:, last].all(axis=1)
    # Without an event only the blown cell is on.
    assert (pipes[~events].sum(axis=1) == 1).all() and pipes[~events, 0].all()
    assert (pipes[events].sum(axis=1) == 5).all()  # pipe 0's single cell is first and last
    assert_binomial(int(events.sum()), n, fns.env.spontaneous_probability)


# --------------------------------------------------------------------------------------------
# make_environment
# --------------------------------------------------------------------------------------------


def test_one_list_of_environments():
    """Names, state types and the paper's four all come from `ENVIRONMENT_CLASSES`."""
    assert list(ENVIRONMENTS) == [cls.__name__ for cls in ENVIRONMENT_CLASSES]
    assert list(ENVIRONMENTS.values()) == list(ENVIRONMENT_CLASSES)
    assert tuple(cls.state_type for cls in ENVIRONMENT_CLASSES) == STATE_TYPES
    assert {"ProcMaze", "ButtonGrid", "PanFlute", "OpenGrid"} <= set(ENVIRONMENTS)
    assert ProcMaze.episodic and OpenGrid.episodic
    assert not ButtonGrid.episodic and not PanFlute.episodic


def test_make_environment_builds_each_environment():
    env = make_environment("ProcMaze", {"grid_size": 4})
    assert isinstance(env, ProcMaze) and env.grid_size == 4 and env.observation_size == 64
    env = make_environment("ButtonGrid", {"num_buttons": 2, "activate_on_reset": False})
    assert env.num_buttons == 2 and env.grid_size == 10 and not env.activate_on_reset
    assert make_environment("PanFlute", {}).num_actions() == 5
    assert make_environment("OpenGrid", None).grid_size == 10


def check_error(name, config, *fragments):
    with pytest.raises(ValueError) as info:
        make_environment(name, config)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_make_environment_errors():
    check_error("ProcMze", {}, "'ProcMze'", "did you mean 'ProcMaze'?", "ButtonGrid")
    check_error("procmaze", {}, "did you mean 'ProcMaze'?")
    check_error("Atari", {}, "'Atari'", "ProcMaze, ButtonGrid, PanFlute, OpenGrid")
    check_error("ProcMaze", {"gridsize": 4}, "'gridsize'", "did you mean 'grid_size'?")
    check_error("PanFlute", {"grid_size": 4}, "'grid_size'", "PanFlute", "num_pipes")
    check_error("ProcMaze", {"grid_size": 4.0}, "'grid_size'", "int")
    check_error("ProcMaze", {"grid_size": True}, "'grid_size'", "int")
    check_error("ProcMaze", {"grid_size": "4"}, "'grid_size'", "int")
    check_error("ButtonGrid", {"spontaneous_reset": 1}, "'spontaneous_reset'", "bool")
    check_error("ProcMaze", {"grid_size": 1}, "'grid_size'", ">= 2")
    check_error("OpenGrid", {"grid_size": 0}, "'grid_size'", ">= 2")
    check_error("ButtonGrid", {"grid_size": 2, "num_buttons": 5}, "'num_buttons'", "4")
    check_error("ButtonGrid", {"num_buttons": 0}, "'num_buttons'")
    check_error("PanFlute", {"num_pipes": 0}, "'num_pipes'", ">= 1")
    check_error("ProcMaze", [("grid_size", 4)], "dict")
    # Edge values that are allowed.
    assert make_environment("ButtonGrid", {"grid_size": 2, "num_buttons": 4}).num_buttons == 4
    assert make_environment("PanFlute", {"num_pipes": 1}).observation_size == 1


def test_constructors_validate_too():
    with pytest.raises(ValueError, match="grid_size"):
        ProcMaze(grid_size=1)
    with pytest.raises(ValueError, match="num_pipes"):
        PanFlute(num_pipes=2.5)


# --------------------------------------------------------------------------------------------
# jit and vmap
# --------------------------------------------------------------------------------------------

# Configurations shared with the tests above, so that their compiled functions are reused; an
# environment not named here is tested at its constructor defaults.
CONFIGS = {
    "ProcMaze": {"grid_size": 4},
    "ButtonGrid": {"grid_size": 4, "num_buttons": 2, "spontaneous_reset": False},
    "PanFlute": {"num_pipes": 5},
    "OpenGrid": {"grid_size": 4},
}


def test_config_names_are_environments():
    assert set(CONFIGS) <= set(ENVIRONMENTS)


def env_fns(name):
    return envs(name, **CONFIGS.get(name, {}))


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_jit_and_vmap_agree_with_single_calls(name):
    fns = env_fns(name)
    n = NUM_MAZES
    reset_keys, step_keys = keys(n, seed=1), keys(n, seed=2)
    acts = np.arange(n, dtype=np.int32) % fns.env.num_actions()
    state, obs = fns.vreset(reset_keys)
    new, new_obs, reward, terminal, info = fns.vstep(step_keys, state, acts)
    size = fns.env.observation_size
    assert obs.shape == (n, size) and obs.dtype == np.bool_
    assert new_obs.shape == (n, size) and new_obs.dtype == np.bool_
    assert reward.shape == (n,) and reward.dtype == np.float32
    assert terminal.shape == (n,) and terminal.dtype == np.bool_
    assert info == {}
    for i in (0, 1, 2, 3, 4, 57):
        single_state, single_obs = fns.reset(reset_keys[i])
        assert_states_equal(single_state, type(state)(*(x[i] for x in state)))
        np.testing.assert_array_equal(single_obs, obs[i])
        single = fns.step(step_keys[i], single_state, int(acts[i]))
        assert_states_equal(single[0], type(new)(*(x[i] for x in new)))
        np.testing.assert_array_equal(single[1], new_obs[i])
        assert float(single[2]) == reward[i] and bool(single[3]) == terminal[i]


# --------------------------------------------------------------------------------------------
# The interface every environment declares
# --------------------------------------------------------------------------------------------


def constructor_defaults(cls):
    return {
        name: parameter.default
        for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_declared_interface_matches_what_the_environment_does(name):
    """State type, observation size, actions and the episodic flag are what reset and step
    produce (shapes from tracing alone; nothing compiles)."""
    cls = ENVIRONMENTS[name]
    assert issubclass(cls, Environment) and isinstance(cls.episodic, bool)
    assert cls.state_type in STATE_TYPES and issubclass(cls.state_type, tuple)
    defaults = constructor_defaults(cls)
    assert all(isinstance(value, bool | int | float) for value in defaults.values()), defaults
    assert cls.config_errors(defaults) == []
    env = make_environment(name, CONFIGS.get(name, {}))
    assert isinstance(env.num_actions(), int) and env.num_actions() >= 1
    assert isinstance(env.observation_size, int) and env.observation_size >= 1
    assert 0.0 <= env.spontaneous_probability <= 1.0
    key = jax.random.key(0)
    state, obs = jax.eval_shape(env.reset, key)
    assert type(state) is cls.state_type
    assert obs.shape == (env.observation_size,) and obs.dtype == np.bool_
    new, new_obs, reward, terminal, info = jax.eval_shape(env.step, key, state, np.int32(0))
    assert type(new) is cls.state_type
    assert jax.tree.map(lambda x: (x.shape, x.dtype), new) == jax.tree.map(
        lambda x: (x.shape, x.dtype), state
    )
    assert new_obs.shape == obs.shape and new_obs.dtype == np.bool_
    assert (reward.shape, reward.dtype) == ((), np.float32)
    assert (terminal.shape, terminal.dtype) == ((), np.bool_) and info == {}


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_continuing_environments_never_terminate(name):
    """A continuing environment's `terminal` is false on every step of a random rollout; an
    episodic one's `terminal` is its own to decide (tested per environment above)."""
    fns = env_fns(name)
    n = NUM_MAZES
    state, _ = fns.vreset(keys(n, seed=5))
    terminals = []
    for t in range(3):
        acts = np.random.default_rng(t).integers(0, fns.env.num_actions(), n, dtype=np.int32)
        state, _, _, terminal, _ = fns.vstep(keys(n, seed=6 + t), state, acts)
        terminals.append(terminal)
    if not ENVIRONMENTS[name].episodic:
        assert not np.any(terminals)


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_state_type_is_saved_by_jax_export(name):
    """Every state type crosses a saved program's boundary (the default saved-program cache):
    `saved_programs` registers it, so an exported reset round-trips."""
    env = make_environment(name, CONFIGS.get(name, {}))
    key = jax.random.PRNGKey(0)
    exported = jax.export.export(jax.jit(env.reset))(key)
    again = jax.export.deserialize(exported.serialize())
    assert again.out_tree == jax.tree.structure(jax.eval_shape(env.reset, key))


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
@settings(max_examples=25, deadline=None, database=None)
@given(data=st.data())
def test_any_env_config_builds_or_is_one_line(name, data):
    """A config of the constructor's keys (and stray ones) with any small values either builds
    the environment or raises one ValueError line that names the environment."""
    keys_ = [*constructor_defaults(ENVIRONMENTS[name]), "grid_size", "size", "num_pipes"]
    values = st.one_of(st.integers(-2, 12), st.booleans(), st.floats(0, 4), st.text(max_size=2))
    config = data.draw(st.dictionaries(st.sampled_from(keys_), values, max_size=4))
    try:
        env = make_environment(name, config)
    except ValueError as error:
        assert "\n" not in str(error) and name in str(error), str(error)
    else:
        assert isinstance(env, ENVIRONMENTS[name])


@pytest.mark.parametrize("name", list(ENVIRONMENTS))
def test_episodic_env_must_say_what_the_environment_is(name):
    """A config whose `episodic_env` contradicts its environment stops in one line before
    anything compiles; the right value sets up the run."""
    episodic = ENVIRONMENTS[name].episodic
    raw = {**AGENTS["ER"].shipped(), "environment": name, "env_config": {}, "num_seeds": 1}
    raw.update(num_hidden_units=8, batch_size=8, buffer_size=100)
    assert experiment.prepare(AGENTS["ER"].definition, {**raw, "episodic_env": episodic}).env
    with pytest.raises(experiment.RunError) as info:
        experiment.prepare(AGENTS["ER"].definition, {**raw, "episodic_env": not episodic})
    message = str(info.value)
    assert "\n" not in message and message.startswith("config error: episodic_env: ")
    assert name in message and f"must be {str(episodic).lower()}" in message
