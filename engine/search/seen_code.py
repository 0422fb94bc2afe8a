"""The code already tried: for every experiment's code (engine/experiment/checks.code_hash), the
first experiment that had it, so that a repeat is refused naming the experiment it repeats.

Part of the evolution core (engine/search/evolution.py): no Ray, git, threads or files here.
"""

from __future__ import annotations

SET_ASIDE = "once comments, formatting and number spelling are set aside"


class SeenCode:
    """The code of every experiment so far -> the first experiment with that code and the commit
    it changed ("" for the starting code)."""

    def __init__(self, start: str) -> None:
        self._first: dict[str, tuple[str, str]] = {start: ("", "")}

    def __contains__(self, code: str) -> bool:
        return code in self._first

    def remember(self, code: str, exp_id: str, parent: str) -> None:
        """Note that experiment `exp_id`, a change of `parent`, has the code `code`, unless an
        earlier one had it: a repeat of it is refused, naming the first. Resume calls it for
        every journaled experiment, in journal order."""
        self._first.setdefault(code, (exp_id, parent))

    def repeats(self, code: str, parent: str) -> str:
        """Why code already seen is refused, naming the experiment it repeats."""
        first, first_parent = self._first[code]
        if not first:
            return f"it repeats the starting code, {SET_ASIDE}"
        if first_parent == parent:
            return f"it repeats {first}: the same change to the same parent, {SET_ASIDE}"
        return f"it repeats the code of {first}, made from another parent, {SET_ASIDE}"
