"""Grid environments of the paper: ProcMaze, ButtonGrid, PanFlute and OpenGrid.

Every environment is a subclass of `Environment` (its docstring is the interface), built from
``env_config`` keyword arguments, and listed once in `ENVIRONMENT_CLASSES`: the environment
names (`ENVIRONMENTS`), the state types a saved program names (`STATE_TYPES`) and whether a
config's `episodic_env` is right all come from that list.

Grid moves: action 0 no-op, 1 up (row - 1), 2 left (col - 1), 3 down (row + 1), 4 right
(col + 1), clipped to the grid. Positions are ``[row, col]`` int32 pairs. Grid observations are
``(G, G, C)`` bool tensors flattened row-major, so channel ``ch`` of cell ``[r, c]`` is bit
``(r * G + c) * C + ch``.
"""

import difflib
import inspect
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Row/col displacement of each grid action: no-op, up, left, down, right.
_MOVES = np.array([[0, 0], [-1, 0], [0, -1], [1, 0], [0, 1]], dtype=np.int32)
_NUM_GRID_ACTIONS = len(_MOVES)


def _clipped_move(position: jax.Array, action: jax.Array, grid_size: int) -> jax.Array:
    """The cell reached from ``position`` by a grid action, clipped to the grid."""
    return jnp.clip(position + jnp.asarray(_MOVES)[action], 0, grid_size - 1)


def _one_hot_cell(position: jax.Array, grid_size: int) -> jax.Array:
    """A ``(G, G)`` bool plane that is true only at ``position``."""
    rows = jnp.arange(grid_size)[:, None]
    cols = jnp.arange(grid_size)[None, :]
    return (rows == position[0]) & (cols == position[1])


def _bernoulli(key: jax.Array, probability: float) -> jax.Array:
    """A bool scalar that is true with ``probability`` (statically false when it is 0)."""
    if probability == 0.0:
        return jnp.asarray(False)
    return jax.random.uniform(key) < probability


def _goal_reaching_step(key, player, goal, moved, probability: float, teleport: bool):
    """The goal dynamics shared by ProcMaze and OpenGrid, once the move is known.

    `terminal` is whether the player stood on the goal *before* moving, so the agent sees the
    goal state and the episode ends on the following step; the reward is -1 on every step. Then,
    with `probability` (its own subkey), the player is teleported onto the goal, or, without
    `teleport`, the episode terminates instead. Returns (player, reward, terminal).
    """
    (key_spontaneous,) = jax.random.split(key, 1)
    terminal = jnp.all(player == goal)
    spontaneous = _bernoulli(key_spontaneous, probability)
    if teleport:
        moved = jnp.where(spontaneous, goal, moved)
    else:
        terminal = terminal | spontaneous
    return moved, jnp.asarray(-1.0, jnp.float32), terminal


def tree_select(condition: jax.Array, on_true: Any, on_false: Any) -> Any:
    """`on_true` where `condition`, else `on_false`, leaf by leaf (for state pytrees)."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), on_true, on_false)


class Environment:
    """What every environment declares, and what the runner, the saved programs and the Figure 4
    driver read from it (in the spirit of gymnax's `Environment`; `gymnax_environments` turns
    one into a gymnax environment).

    Class attributes:
    - ``state_type``: the ``NamedTuple`` of its state (a pytree that a saved program names);
    - ``episodic``: whether an episode ends (a config's ``episodic_env`` must say the same).

    Built from keyword arguments with defaults (the config's ``env_config``: accepted keys and
    their types are the constructor's keywords and the types of their defaults; `config_errors`
    checks the values). Sizes are Python ints fixed at construction (static under ``jax.jit``);
    the constructor sets ``observation_size`` (int) and may set ``spontaneous_probability``
    (float: the per-step probability of its spontaneous event, 0.0 when off or absent). Every
    method is a
    pure function of its arguments, so it can be jitted and vmapped:

    - ``reset(key) -> (state, obs)``
    - ``step(key, state, action) -> (state, obs, reward, terminal, info)`` with ``reward`` a
      float32 scalar, ``terminal`` a bool scalar and ``info`` an empty dict
    - ``get_observation(state) -> obs``: a flat ``bool`` vector of ``observation_size`` bits
    - ``num_actions() -> int``
    """

    state_type: type
    episodic: bool
    observation_size: int
    spontaneous_probability = 0.0

    @staticmethod
    def config_errors(config: dict) -> list[str]:
        """One line per out-of-range value of ``config`` (every constructor keyword, defaults
        filled in; types and unknown keys are checked from the constructor's signature)."""
        del config
        return []

    def num_actions(self) -> int:
        raise NotImplementedError

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        raise NotImplementedError

    def step(self, key: jax.Array, state: Any, action: jax.Array) -> tuple:
        raise NotImplementedError

    def get_observation(self, state: Any) -> jax.Array:
        raise NotImplementedError


class _GoalGrid(Environment):
    """What ProcMaze and OpenGrid share: the constructor, grid moves and the goal dynamics
    (`_goal_reaching_step`). A subclass says how many observation channels it has, how likely
    its spontaneous event is, and where a move ends (`_moved`: walls, or none)."""

    num_channels: int
    episodic = True

    def __init__(
        self,
        grid_size: int = 10,
        spontaneous_termination: bool = True,
        teleport_on_termination: bool = True,
    ):
        _check_config(type(self), locals())
        self.grid_size = int(grid_size)
        self.spontaneous_termination = bool(spontaneous_termination)
        self.teleport_on_termination = bool(teleport_on_termination)
        self.observation_size = self.grid_size * self.grid_size * self.num_channels
        self.spontaneous_probability = (
            self._spontaneous_rate() if self.spontaneous_termination else 0.0
        )

    @staticmethod
    def config_errors(config: dict) -> list[str]:
        return _grid_size_errors(config)

    def num_actions(self) -> int:
        return _NUM_GRID_ACTIONS

    def step(self, key: jax.Array, state, action: jax.Array):
        player, reward, terminal = _goal_reaching_step(
            key,
            state.player,
            state.goal,
            self._moved(state, action),
            self.spontaneous_probability,
            self.teleport_on_termination,
        )
        state = state._replace(player=player)
        return state, self.get_observation(state), reward, terminal, {}


# --------------------------------------------------------------------------------------------
# ProcMaze
# --------------------------------------------------------------------------------------------


class ProcMazeState(NamedTuple):
    player: jax.Array  # int32[2], [row, col]
    goal: jax.Array  # int32[2], [row, col]
    walls: jax.Array  # bool[G, G], true where the cell is a wall


class _MazeCarry(NamedTuple):
    visited: jax.Array  # bool[(G+2)**2], padded grid, flat; visited == open
    visited_neighbours: jax.Array  # int32[(G+2)**2], number of visited 4-neighbours
    stack: jax.Array  # int32[G*G], flat padded cell indices; stack[:pointer] is live
    pointer: jax.Array  # int32 scalar, number of cells on the stack
    iteration: jax.Array  # int32 scalar, row of the choice noise to use


def generate_maze(noise: jax.Array, grid_size: int) -> jax.Array:
    """Randomised depth-first search maze; returns the ``(G, G)`` bool wall grid.

    ``noise`` is float32[2*G*G + 1, 4] of iid uniforms on [0, 1): row 0, column 0 picks the
    start cell; row ``1 + i`` picks among the candidates of iteration ``i``. Every iteration
    either opens a cell (at most G*G - 1 times) or pops one for good (at most G*G times), so
    that is enough rows. Taking the noise as an argument keeps the PRNG out of the loop body.

    Cells are flat indices into the grid padded with a one-cell border (never visited, never a
    candidate), so the four neighbours of any grid cell are valid indices and need no bounds
    test. The number of visited neighbours of every cell is kept up to date as cells open, so
    "exactly one visited on-grid neighbour" is a lookup. Updates are dense comparisons over the
    (G+2)**2 cells rather than scatters: cheaper to compile and to run under ``vmap``.
    """
    G = grid_size
    W = G + 2
    interior = np.zeros((W, W), dtype=bool)
    interior[1:-1, 1:-1] = True
    interior = jnp.asarray(interior.reshape(-1))
    offsets = jnp.array([-W, -1, W, 1], dtype=jnp.int32)  # up, left, down, right
    cells = jnp.arange(W * W, dtype=jnp.int32)
    slots = jnp.arange(G * G, dtype=jnp.int32)

    def open_cell(visited, visited_neighbours, cell, do_open):
        distance = jnp.abs(cells - cell)
        is_neighbour = (distance == 1) | (distance == W)  # cell is interior: no wrap-around
        return (
            visited | (do_open & (distance == 0)),
            visited_neighbours + (do_open & is_neighbour).astype(jnp.int32),
        )

    start = jnp.minimum((noise[0, 0] * (G * G)).astype(jnp.int32), G * G - 1)
    start = (start // G + 1) * W + start % G + 1
    visited, visited_neighbours = open_cell(
        jnp.zeros(W * W, jnp.bool_), jnp.zeros(W * W, jnp.int32), start, True
    )
    carry = _MazeCarry(
        visited=visited,
        visited_neighbours=visited_neighbours,
        stack=jnp.where(slots == 0, start, 0),
        pointer=jnp.asarray(1, jnp.int32),
        iteration=jnp.asarray(0, jnp.int32),
    )

    def body(carry: _MazeCarry) -> _MazeCarry:
        cell = carry.stack[carry.pointer - 1]  # pop
        candidates = cell + offsets
        frontier = interior & ~carry.visited & (carry.visited_neighbours == 1)
        expandable = frontier[candidates]
        grow = jnp.any(expandable)
        # Uniform choice among the expandable candidates: the largest of iid uniforms.
        chosen = candidates[jnp.argmax(jnp.where(expandable, noise[carry.iteration + 1], -1.0))]
        visited, visited_neighbours = open_cell(
            carry.visited, carry.visited_neighbours, chosen, grow
        )
        # When growing, the popped cell goes back (it stays at pointer - 1) and the chosen
        # cell is pushed on top of it; otherwise the pop stands.
        return _MazeCarry(
            visited=visited,
            visited_neighbours=visited_neighbours,
            stack=jnp.where(slots == carry.pointer, chosen, carry.stack),
            pointer=jnp.where(grow, carry.pointer + 1, carry.pointer - 1),
            iteration=carry.iteration + 1,
        )

    carry = jax.lax.while_loop(lambda c: c.pointer > 0, body, carry)
    return ~carry.visited.reshape(W, W)[1:-1, 1:-1]


def _uniform_open_cell(noise: jax.Array, walls: jax.Array) -> jax.Array:
    """The ``[row, col]`` of the open cell with the largest of iid uniforms ``noise[G*G]``:
    a uniform draw from the cells that are not walls."""
    G = walls.shape[0]
    index = jnp.argmax(jnp.where(walls.reshape(-1), -1.0, noise))
    return jnp.stack([index // G, index % G]).astype(jnp.int32)


class ProcMaze(_GoalGrid):
    """Procedurally generated maze; reach the goal. Episodic, reward -1 per step.

    Observation channels: 0 player, 1 goal, 2 wall, 3 empty (not wall); ``4 G^2`` bits.
    """

    num_channels = 4
    state_type = ProcMazeState

    def _spontaneous_rate(self) -> float:
        # 0.1 divided by the number of open cells of a maze with the most open cells.
        G = self.grid_size
        return 0.1 / ((G + 1) * math.ceil(G / 2) - G % 2)

    def reset(self, key: jax.Array) -> tuple[ProcMazeState, jax.Array]:
        G = self.grid_size
        # One PRNG call for the whole reset (threefry is the costly part to compile), cut into
        # independent pieces: maze noise, then player noise, then goal noise.
        maze_rows = 2 * G * G + 1
        noise = jax.random.uniform(key, (maze_rows * 4 + 2 * G * G,))
        maze_noise, player_noise, goal_noise = jnp.split(
            noise, [maze_rows * 4, maze_rows * 4 + G * G]
        )
        walls = generate_maze(maze_noise.reshape(maze_rows, 4), G)
        state = ProcMazeState(
            player=_uniform_open_cell(player_noise, walls),
            goal=_uniform_open_cell(goal_noise, walls),
            walls=walls,
        )
        return state, self.get_observation(state)

    def _moved(self, state: ProcMazeState, action: jax.Array) -> jax.Array:
        target = _clipped_move(state.player, action, self.grid_size)
        return jnp.where(state.walls[target[0], target[1]], state.player, target)

    def get_observation(self, state: ProcMazeState) -> jax.Array:
        G = self.grid_size
        planes = jnp.stack(
            [
                _one_hot_cell(state.player, G),
                _one_hot_cell(state.goal, G),
                state.walls,
                ~state.walls,
            ],
            axis=-1,
        )
        return planes.reshape(-1)


# --------------------------------------------------------------------------------------------
# OpenGrid
# --------------------------------------------------------------------------------------------


class OpenGridState(NamedTuple):
    player: jax.Array  # int32[2], [row, col]
    goal: jax.Array  # int32[2], always [G-1, G-1]


class OpenGrid(_GoalGrid):
    """Empty grid with the goal in the bottom-right corner; ProcMaze dynamics without walls.

    Observation: a single player channel, ``G^2`` bits.
    """

    num_channels = 1
    state_type = OpenGridState

    def _spontaneous_rate(self) -> float:
        return 0.1 / self.grid_size

    def reset(self, key: jax.Array) -> tuple[OpenGridState, jax.Array]:
        G = self.grid_size
        state = OpenGridState(
            player=jax.random.randint(key, (2,), 0, G, dtype=jnp.int32),
            goal=jnp.full((2,), G - 1, jnp.int32),
        )
        return state, self.get_observation(state)

    def _moved(self, state: OpenGridState, action: jax.Array) -> jax.Array:
        return _clipped_move(state.player, action, self.grid_size)

    def get_observation(self, state: OpenGridState) -> jax.Array:
        return _one_hot_cell(state.player, self.grid_size).reshape(-1)


# --------------------------------------------------------------------------------------------
# ButtonGrid
# --------------------------------------------------------------------------------------------


class ButtonGridState(NamedTuple):
    player: jax.Array  # int32[2], [row, col]
    buttons: jax.Array  # int32[N, 2], [row, col] of each button; distinct cells
    button_on: jax.Array  # bool[N]


class ButtonGrid(Environment):
    """Walk onto buttons to toggle them; reward 1 when all are on, then a fresh layout.

    Continuing (``terminal`` is always false). Observation channels: 0 player, 1 button on,
    2 button off; ``3 G^2`` bits.
    """

    state_type = ButtonGridState
    episodic = False

    def __init__(
        self,
        grid_size: int = 10,
        num_buttons: int = 3,
        spontaneous_reset: bool = True,
        activate_on_reset: bool = True,
    ):
        _check_config(type(self), locals())
        self.grid_size = int(grid_size)
        self.num_buttons = int(num_buttons)
        self.spontaneous_reset = bool(spontaneous_reset)
        self.activate_on_reset = bool(activate_on_reset)
        G = self.grid_size
        self.num_channels = 3
        self.observation_size = G * G * self.num_channels
        self.spontaneous_probability = 1.0 / (10 * G * G) if self.spontaneous_reset else 0.0

    @staticmethod
    def config_errors(config: dict) -> list[str]:
        errors = _grid_size_errors(config)
        G, N = config["grid_size"], config["num_buttons"]
        if not errors and not 1 <= N <= G * G:
            errors.append(f"'num_buttons' must be between 1 and grid_size**2 = {G * G}, got {N}")
        return errors

    def num_actions(self) -> int:
        return _NUM_GRID_ACTIONS

    def reset(self, key: jax.Array) -> tuple[ButtonGridState, jax.Array]:
        G, N = self.grid_size, self.num_buttons
        # One PRNG call: two uniforms for the player's row and col, G*G for the buttons. The
        # cells holding the N largest of G*G iid uniforms, in decreasing order, are an ordered
        # uniform sample without replacement (cheaper to compile than a permutation).
        noise = jax.random.uniform(key, (2 + G * G,))
        player = jnp.minimum((noise[:2] * G).astype(jnp.int32), G - 1)
        _, cells = jax.lax.top_k(noise[2:], N)
        state = ButtonGridState(
            player=player,
            buttons=jnp.stack([cells // G, cells % G], axis=-1).astype(jnp.int32),
            button_on=jnp.zeros(N, jnp.bool_),
        )
        return state, self.get_observation(state)

    def step(self, key: jax.Array, state: ButtonGridState, action: jax.Array):
        key_spontaneous, key_reset = jax.random.split(key)
        success = jnp.all(state.button_on)
        reward = success.astype(jnp.float32)
        player = _clipped_move(state.player, action, self.grid_size)
        moved = jnp.any(player != state.player)
        pressed = moved & jnp.all(state.buttons == player, axis=-1)
        button_on = state.button_on ^ pressed

        spontaneous = _bernoulli(key_spontaneous, self.spontaneous_probability)
        if self.activate_on_reset:
            button_on = button_on | spontaneous
            replace = success
        else:
            replace = success | spontaneous
        state = ButtonGridState(player=player, buttons=state.buttons, button_on=button_on)
        # The reset's subkey is not the spontaneous event's. One fresh state serves both the
        # success reset and a spontaneous reset (when both happen, the result is one reset).
        fresh, _ = self.reset(key_reset)
        state = tree_select(replace, fresh, state)
        return state, self.get_observation(state), reward, jnp.asarray(False), {}

    def get_observation(self, state: ButtonGridState) -> jax.Array:
        G = self.grid_size
        button_cells = jax.vmap(_one_hot_cell, (0, None))(state.buttons, G)  # bool[N, G, G]
        on = jnp.any(button_cells & state.button_on[:, None, None], axis=0)
        off = jnp.any(button_cells & ~state.button_on[:, None, None], axis=0)
        planes = jnp.stack([_one_hot_cell(state.player, G), on, off], axis=-1)
        return planes.reshape(-1)


# --------------------------------------------------------------------------------------------
# PanFlute
# --------------------------------------------------------------------------------------------


class PanFluteState(NamedTuple):
    # bool[P*(P+1)//2]: the pipes concatenated, pipe 0 first; pipe i has length i+1 and
    # occupies [i*(i+1)//2, (i+1)*(i+2)//2), its first (blown) cell first, its last cell last.
    pipes: jax.Array


class PanFlute(Environment):
    """Blow into pipes so that every pipe's last cell is on at once; reward 1 when they are.

    Continuing. ``num_pipes`` actions: action ``i`` blows into pipe ``i``. Observation: the
    state's ``pipes`` vector, ``P(P+1)/2`` bits.
    """

    state_type = PanFluteState
    episodic = False

    def __init__(self, num_pipes: int = 5, spontaneous_reward: bool = True):
        _check_config(type(self), locals())
        self.num_pipes = P = int(num_pipes)
        self.spontaneous_reward = bool(spontaneous_reward)
        self.observation_size = P * (P + 1) // 2
        self.spontaneous_probability = 1.0 / (P * P) if self.spontaneous_reward else 0.0
        lengths = np.arange(1, P + 1)
        ends = np.cumsum(lengths)
        self._pipe_of_cell = np.repeat(np.arange(P), lengths)
        self._is_first = np.zeros(self.observation_size, dtype=bool)
        self._is_first[ends - lengths] = True
        self._is_last = np.zeros(self.observation_size, dtype=bool)
        self._is_last[ends - 1] = True

    @staticmethod
    def config_errors(config: dict) -> list[str]:
        P = config["num_pipes"]
        return [] if P >= 1 else [f"'num_pipes' must be >= 1, got {P}"]

    def num_actions(self) -> int:
        return self.num_pipes

    def reset(self, key: jax.Array) -> tuple[PanFluteState, jax.Array]:
        del key
        state = PanFluteState(pipes=jnp.zeros(self.observation_size, jnp.bool_))
        return state, self.get_observation(state)

    def step(self, key: jax.Array, state: PanFluteState, action: jax.Array):
        (key_spontaneous,) = jax.random.split(key, 1)
        is_last = jnp.asarray(self._is_last)
        reward = jnp.all(state.pipes | ~is_last).astype(jnp.float32)
        # Within a pipe, cell j takes the value of cell j-1; each pipe's first cell is refilled
        # by the action, which also overwrites what the previous pipe's last cell rolled in.
        shifted = jnp.roll(state.pipes, 1)
        blown = jnp.asarray(self._pipe_of_cell) == action
        pipes = jnp.where(jnp.asarray(self._is_first), blown, shifted)
        spontaneous = _bernoulli(key_spontaneous, self.spontaneous_probability)
        pipes = pipes | (spontaneous & is_last)
        state = PanFluteState(pipes=pipes)
        return state, self.get_observation(state), reward, jnp.asarray(False), {}

    def get_observation(self, state: PanFluteState) -> jax.Array:
        return state.pipes


# --------------------------------------------------------------------------------------------
# Validated construction, and the one list of environments
# --------------------------------------------------------------------------------------------


def _grid_size_errors(config: dict) -> list[str]:
    G = config["grid_size"]
    return [] if G >= 2 else [f"'grid_size' must be >= 2, got {G}"]


def _constructor_defaults(cls: type) -> dict[str, Any]:
    """The constructor's keyword arguments and defaults: the one source of accepted keys."""
    return {
        name: parameter.default
        for name, parameter in inspect.signature(cls).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _did_you_mean(word: str, options: list[str]) -> str:
    lowered = {option.lower(): option for option in options}
    match = difflib.get_close_matches(word.lower(), list(lowered), n=1)
    return f" (did you mean {lowered[match[0]]!r}?)" if match else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_config(cls: type, config: dict) -> None:
    """Raises a one-line ValueError for an unknown key, a wrong type or a value out of range."""
    name = cls.__name__
    defaults = _constructor_defaults(cls)
    config = {key: value for key, value in config.items() if key not in ("self", "__class__")}
    for key in config:
        if key not in defaults:
            raise ValueError(
                f"env_config: unknown key {key!r} for {name}"
                f"{_did_you_mean(str(key), list(defaults))}; valid keys: {', '.join(defaults)}"
            )
    for key, value in config.items():
        expected = type(defaults[key])
        if expected is bool:
            ok = isinstance(value, bool | np.bool_)
        elif expected is float:
            ok = _is_int(value) or isinstance(value, float | np.floating)
        else:
            ok = _is_int(value)
        if not ok:
            raise ValueError(
                f"env_config: {key!r} for {name} must be {expected.__name__}, "
                f"got {type(value).__name__} {value!r}"
            )
    errors = cls.config_errors({**defaults, **config})
    if errors:
        raise ValueError(f"env_config: {errors[0]} for {name}")


def make_environment(name: str, env_config: dict | None = None):
    """Builds environment ``name`` from ``env_config`` after validating it.

    Accepted keys and their types are the constructor's keyword arguments and the types of
    their defaults. Raises a one-line ``ValueError`` naming the problem.
    """
    if not isinstance(name, str) or name not in ENVIRONMENTS:
        hint = _did_you_mean(name, list(ENVIRONMENTS)) if isinstance(name, str) else ""
        raise ValueError(
            f"unknown environment {name!r}{hint}; valid environments: {', '.join(ENVIRONMENTS)}"
        )
    env_config = {} if env_config is None else env_config
    if not isinstance(env_config, dict):
        raise ValueError(f"env_config must be a dict, got {type(env_config).__name__}")
    cls = ENVIRONMENTS[name]
    _check_config(cls, env_config)
    return cls(**env_config)


# The one list of environments: a config's `environment` is a class name from it.
ENVIRONMENT_CLASSES = (ProcMaze, ButtonGrid, PanFlute, OpenGrid)

ENVIRONMENTS = {cls.__name__: cls for cls in ENVIRONMENT_CLASSES}
# Every environment's state type: the pytrees a saved program names (`saved_programs`).
STATE_TYPES = tuple(cls.state_type for cls in ENVIRONMENT_CLASSES)
