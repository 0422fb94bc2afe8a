"""What an edit must pass before it is committed and reaches a GPU.

A refused edit is recorded as `rejected` and its reason goes back to the agent.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import re
import tokenize

from agents.base import Proposal
from engine.spec import Spec

# What a line that only reseeds or swaps a random generator mentions.
_RANDOMNESS = re.compile(r"seed|rng|random|generator", re.IGNORECASE)


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
    """Whether every changed line of code is about randomness (a seed, a random generator):
    such a child can only win on noise. Comments and blank lines do not count, so a note beside a
    new seed does not hide it; a false alarm costs only a confirmation run."""
    changed: list[str] = []
    for name in sorted(set(parent) | set(child)):
        if parent.get(name) == child.get(name):
            continue  # most changes touch one file: tokenizing the others costs tens of ms
        before = _code_lines(name, parent.get(name, ""))
        after = _code_lines(name, child.get(name, ""))
        matcher = difflib.SequenceMatcher(a=before, b=after, autojunk=False)
        for tag, first, last, new_first, new_last in matcher.get_opcodes():
            if tag != "equal":
                changed += before[first:last] + after[new_first:new_last]
    return bool(changed) and all(_RANDOMNESS.search(line) for line in changed)


def _code_lines(name: str, text: str) -> list[str]:
    """The non-blank lines of a file, without their comments where it is Python."""
    if name.endswith(".py"):
        text = _without_comments(text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def _without_comments(source: str) -> str:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source
    lines = source.splitlines()
    for token in reversed(tokens):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            lines[row - 1] = lines[row - 1][:column]
    return "\n".join(lines)
