"""What an edit must pass before it is committed and reaches a GPU.

A refused edit is recorded as `rejected` and its reason goes back to the agent.
"""

from __future__ import annotations

import difflib
import hashlib

from agents.base import Proposal
from engine.spec import Spec


class Refused(ValueError):
    """An edit the engine will not run; the message is the reason the agent is told."""


def apply_proposal(parent: dict[str, str], proposal: Proposal, spec: Spec) -> dict[str, str]:
    """The full file set after `proposal`, or `Refused` when it changes what it may not, does not
    compile, or changes nothing."""
    for name in sorted(proposal.files):
        if name in spec.protected_files:
            raise Refused(f"it changes {name}, which is protected")
        if name not in spec.editable_files:
            raise Refused(f"it touches {name}, which the goal file does not list as editable")
    changed = {name: text for name, text in proposal.files.items() if parent.get(name) != text}
    if not changed:
        raise Refused("it changes nothing")
    for name, text in changed.items():
        if name.endswith(".py"):
            try:
                compile(text, name, "exec")
            except SyntaxError as error:
                where = f"line {error.lineno}: {error.msg}"
                raise Refused(f"{name} does not compile: {where}") from None
    return {**parent, **changed}


def code_hash(files: dict[str, str], editable: tuple[str, ...]) -> str:
    """Identifies the code of an experiment, for refusing duplicates."""
    digest = hashlib.sha256()
    for name in sorted(editable):
        digest.update(name.encode() + b"\0" + files.get(name, "").encode() + b"\0")
    return digest.hexdigest()


def changes_only_a_seed(parent: dict[str, str], child: dict[str, str]) -> bool:
    """Whether every changed line mentions a seed: such a child can only win on noise."""
    changed_lines = []
    for name in sorted(set(parent) | set(child)):
        before, after = parent.get(name, "").splitlines(), child.get(name, "").splitlines()
        for line in difflib.unified_diff(before, after, lineterm="", n=0):
            if line[:1] in "+-" and not line.startswith(("+++", "---")):
                changed_lines.append(line[1:])
    meaningful = [line for line in changed_lines if line.strip()]
    return bool(meaningful) and all("seed" in line.lower() for line in meaningful)
