"""Strategies: how an island's agent works, so that islands explore differently.

A strategy is a prompt variant and a temperature for the LLM agents (and the models they ask,
when not the search's), and the size and kind of moves for the offline agent. The bundled ones
are in agents/prompts/strategies/ (`balanced`, the default, `bold`, `refine`, `simplify`);
`--strategies` names some of them (`bold,refine,simplify`) or a TOML file of the same format that
defines others. The islands take the strategies in turn: island k has strategy k mod their count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import tomllib

BUNDLED = Path(__file__).parent / "prompts" / "strategies"
DEFAULT = "balanced"
_KEYS = {"prompt", "temperature", "models", "pair_probability", "step_scale", "shrink"}


@dataclass(frozen=True)
class Strategy:
    name: str
    prompt: str = ""  # added to the LLM's instructions
    temperature: float | None = None  # None: the provider's default
    models: tuple[str, ...] = ()  # MODEL[=WEIGHT]; empty: the search's --model
    pair_probability: float = 0.25  # offline agent: how often two knobs move at once
    step_scale: float = 1.0  # offline agent: a power of the usual steps (2: twice as far, in log)
    shrink: float = 1.0  # offline agent: weight of a move that makes a number smaller
    source: str = field(default="", compare=False)  # where it was defined, for messages


def load_strategies(spec: str) -> list[Strategy]:
    """The strategies `spec` names: "" (the default), bundled names separated by commas, or the
    path of a TOML file of strategies (every one it defines, in its order). Raises ValueError,
    in one sentence, for a name or a file it cannot use."""
    spec = spec.strip()
    if not spec:
        return [default_strategy()]
    if _names_file(spec):
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--strategies {spec}: no such file")
        return list(_read(path).values())
    bundled = _bundled()
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in bundled]
    if unknown or not names:
        raise ValueError(f"--strategies {spec!r}: unknown strategy {', '.join(unknown) or '?'}; "
                         f"choose among {', '.join(bundled)} or give a .toml file")
    return [bundled[name] for name in names]


def default_strategy() -> Strategy:
    """`balanced`: the agents as they work without --strategies."""
    return _bundled()[DEFAULT]


def recorded(spec: str) -> str:
    """`spec` as run.json keeps it for a resume, which may start in another folder: a file by
    its absolute path."""
    return str(Path(spec).resolve()) if _names_file(spec.strip()) else spec


def _names_file(spec: str) -> bool:
    return spec.endswith(".toml") or Path(spec).is_file()


def island_strategies(spec: str, islands: int) -> list[Strategy]:
    """The strategy of each island: the strategies of `spec` in turn."""
    strategies = load_strategies(spec)
    return [strategies[island % len(strategies)] for island in range(islands)]


@lru_cache(maxsize=1)
def _bundled() -> dict[str, Strategy]:
    return _read(BUNDLED / "strategies.toml")


def _read(path: Path) -> dict[str, Strategy]:
    try:
        tables = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ValueError(f"the strategies file {path} cannot be read: {error}") from None
    if not tables:
        raise ValueError(f"the strategies file {path} defines no strategy")
    return {name: _strategy(name, table, path) for name, table in tables.items()}


def _strategy(name: str, table: object, path: Path) -> Strategy:
    where = f"strategy {name!r} of {path}"
    if not isinstance(table, dict):
        raise ValueError(f"{where} is not a table ([{name}] followed by its settings)")
    if unknown := sorted(set(table) - _KEYS):
        raise ValueError(f"{where} has unknown settings {', '.join(unknown)}; "
                         f"it may set {', '.join(sorted(_KEYS))}")
    prompt = table.get("prompt")
    if prompt is None:  # <name>.md beside the file, if there is one
        beside = path.parent / f"{name}.md"
        prompt = beside.read_text() if beside.is_file() else ""
    models = table.get("models", [])
    numbers = {key: table[key] for key in ("temperature", "pair_probability", "step_scale",
                                            "shrink") if key in table}
    for key, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0):
            raise ValueError(f"{where}: {key} must be a number of at least 0, not {value!r}")
    if not isinstance(prompt, str) or not (isinstance(models, list)
                                           and all(isinstance(m, str) for m in models)):
        raise ValueError(f"{where}: prompt must be text and models a list of MODEL[=WEIGHT]")
    if numbers.get("pair_probability", 0) > 1:
        raise ValueError(f"{where}: pair_probability must be at most 1")
    temperature = numbers.get("temperature")
    return Strategy(name, prompt.strip(), None if temperature is None else float(temperature),
                    tuple(models),
                    **{key: float(value) for key, value in numbers.items()
                       if key != "temperature"}, source=str(path))
