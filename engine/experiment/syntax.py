"""Python's parser, one thread at a time.

CPython 3.11 counts the depth of the syntax tree `ast.parse` is building in one counter per
interpreter, not per thread (python/cpython#106905): two threads parsing at once can make either
fail with "SystemError: AST constructor recursion depth mismatch". The driver parses every
candidate while the proposer threads parse their parents' knobs, so every parse of the engine,
and of the agents through the knob helpers, goes through this one lock.
"""

from __future__ import annotations

import ast
import threading

_PARSING = threading.Lock()


def parse(source: str) -> ast.Module:
    """`ast.parse(source)`, never at the same time as another thread's."""
    with _PARSING:
        return ast.parse(source)


def literal_value(text: str) -> object:
    """`ast.literal_eval(text)`, which parses `text`, under the same lock."""
    with _PARSING:
        tree = ast.parse(text.strip(), mode="eval")
    return ast.literal_eval(tree)
