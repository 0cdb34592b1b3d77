"""The paper's environments as gymnax environments, for the JAX RL libraries built on gymnax's
API (purejaxrl, rejax, Stoix):

    env, env_params = gymnax_environments.make_gymnax("ProcMaze", {"grid_size": 4})
    obs, state = env.reset(key, env_params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, env_params)

`make_gymnax` returns what `gymnax.make` does, and `register_with_gymnax` makes
`gymnax.make("ProcMaze-mbg", grid_size=4)` work too. The adapter is a subclass of gymnax's
`Environment`, so stepping is gymnax's own code: the key is split into a step key and a reset
key, and an episode that ends (terminated, or truncated at `max_steps_in_episode`) is reset
with the reset key. Without a time limit (the default, as in the paper) a continuing
environment (ButtonGrid, PanFlute) is one endless episode.

Why a subclass in a module of its own: the libraries and gymnax's wrappers test the spaces'
classes (`FlattenObservationWrapper` asserts a gymnax `Box`, rejax picks discrete or continuous
by `isinstance`), so the adapter needs gymnax's classes whatever it derives from; importing
gymnax loads flax, gymnasium, pandas and seaborn (about 1 400 modules, 170 MB), which a training
run, importing `environments`, should not pay for.
"""

from typing import Any

import gymnax
import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

import environments

# The default time limit: none (an int32 step count never reaches it within 2**31 - 1 steps).
NO_TIME_LIMIT = 2**31 - 1
# The suffix of the names `register_with_gymnax` gives (gymnax's own end in "-bsuite", "-misc").
GYMNAX_SUFFIX = "-mbg"


@struct.dataclass
class EnvState(environment.EnvState):
    env_state: Any  # the environment's own state (its `state_type`)


@struct.dataclass
class EnvParams(environment.EnvParams):
    max_steps_in_episode: int = NO_TIME_LIMIT


class GymnaxEnvironment(environment.Environment[EnvState, EnvParams]):
    """One of `environments.ENVIRONMENTS` behind gymnax's interface. Its observations are the
    environment's own flat bool vectors (a `Box` of 0/1 bools, as gymnax's MinAtar), its
    actions `Discrete(num_actions)`, its `info` the environment's (empty) plus gymnax's keys."""

    def __init__(self, env: environments.Environment):
        super().__init__()
        self.env = env

    @property
    def default_params(self) -> EnvParams:
        return EnvParams()

    def step_env(self, key: jax.Array, state: EnvState, action, params: EnvParams):
        env_state, obs, reward, terminal, info = self.env.step(key, state.env_state, action)
        return obs, EnvState(time=state.time + 1, env_state=env_state), reward, terminal, info

    def reset_env(self, key: jax.Array, params: EnvParams):
        env_state, obs = self.env.reset(key)
        return obs, EnvState(time=jnp.asarray(0, jnp.int32), env_state=env_state)

    def get_obs(self, state: EnvState, params=None, key=None) -> jax.Array:
        return self.env.get_observation(state.env_state)

    @property
    def name(self) -> str:
        return type(self.env).__name__

    @property
    def num_actions(self) -> int:
        return self.env.num_actions()

    def action_space(self, params: EnvParams | None = None) -> spaces.Discrete:
        return spaces.Discrete(self.env.num_actions())

    def observation_space(self, params: EnvParams | None = None) -> spaces.Box:
        return spaces.Box(0, 1, (self.env.observation_size,), jnp.bool_)


def make_gymnax(name: str, env_config: dict | None = None) -> tuple[GymnaxEnvironment, EnvParams]:
    """`(env, env_params)` as `gymnax.make` returns them, for environment `name` built from
    `env_config` (validated as a training config's: a one-line `ValueError`)."""
    env = GymnaxEnvironment(environments.make_environment(name, env_config))
    return env, env.default_params


def register_with_gymnax() -> list[str]:
    """Registers every environment with gymnax as `<name>-mbg` (its keyword arguments are the
    `env_config`), so `gymnax.make` builds it; returns the names. Registering again is a no-op."""
    names = []
    for name in environments.ENVIRONMENTS:
        gymnax_name = name + GYMNAX_SUFFIX
        if gymnax_name not in gymnax.registered_envs:
            gymnax.register(gymnax_name, _factory(name))
        names.append(gymnax_name)
    return names


def _factory(name: str):
    return lambda **env_config: make_gymnax(name, env_config)[0]
