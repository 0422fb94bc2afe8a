"""The layers: the CLI (autoresearch/) above the agents (agents/) above the engine (engine/).
The engine never imports an agent; an agent sees of the engine only the agent protocol and the
knob helpers."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AGENTS_MAY_USE = {"engine.protocol", "engine.tuning.knobs"}


def imported(folder: str) -> dict[str, set[str]]:
    """Module names imported by each file of `folder`, at any depth of the code."""
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def test_the_engine_imports_no_agent_and_no_cli():
    offending = {path: sorted(n for n in names if n.split(".")[0] in ("agents", "autoresearch"))
                 for path, names in imported("engine").items()}
    assert {path: names for path, names in offending.items() if names} == {}


def test_the_agents_use_only_the_protocol_and_the_knob_helpers_of_the_engine():
    used = {path: sorted(n for n in names if n.split(".")[0] == "engine"
                         and n not in AGENTS_MAY_USE)
            for path, names in imported("agents").items()}
    assert {path: names for path, names in used.items() if names} == {}
