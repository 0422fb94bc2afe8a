"""Two winners found at the same time, combined: a three-way merge of their code.

When a candidate beat the baseline it was confirmed against, but another winner replaced that
baseline meanwhile, the two changes were made on the same code and each stands alone. Where they
touch different lines, both can be kept: the candidate's changes are applied on top of the new
baseline (as `git merge` would, line by line, by merge3), and the result is confirmed like any
candidate. Where both changed the same or neighbouring lines, the candidate's lines are taken
(as `git merge -X theirs` would) and the baseline's other changes kept: on a wide search the
baseline often holds a smaller step of the very change the candidate makes (a knob moved half as
far), and refusing to combine them dropped every other gain of the candidate
(benchmarks/simulate.py: at 256 GPUs, 0.87 -> 0.77 hours to 90 % of the gain, with the
combination confirmed at once). The confirmation decides which version wins.
"""

from __future__ import annotations

import merge3

from engine.search.members import Member

Files = dict[str, str]
# Winners a combination may bundle: candidates that beat the baseline they were confirmed
# against, which another winner replaced meanwhile. On a wide search many such winners come in
# at once; combined one at a time, each waits a screening run and a confirmation for the one
# before it (benchmarks/simulate.py: at 256 GPUs every promotion added one change).
WINNERS_BUNDLED = 16


def combine(base: Files, ours: Files, theirs: Files, *,
            theirs_first: bool = False) -> Files | None:
    """The files with the changes of both `ours` and `theirs` since `base`; where they overlap,
    with `theirs`' when `theirs_first`, else None."""
    merged: dict[str, str | None] = {}
    for name in sorted(set(base) | set(ours) | set(theirs)):
        original, mine, other = base.get(name), ours.get(name), theirs.get(name)
        if mine == other or other == original:
            merged[name] = mine
        elif mine == original:
            merged[name] = other
        elif None in (original, mine, other):
            if not theirs_first:
                return None  # one side changed a file the other created or deleted
            merged[name] = other
        else:
            lines: list[str] = []
            for group in merge3.Merge3(original.splitlines(True), mine.splitlines(True),
                                       other.splitlines(True)).merge_groups():
                if group[0] == "conflict":
                    if not theirs_first:
                        return None
                    lines += group[3]  # ("conflict", base lines, ours, theirs)
                else:
                    lines += group[1]
            merged[name] = "".join(lines)
    return {name: text for name, text in merged.items() if text is not None}


class Winners:
    """The latest winners waiting to be combined, each with the baseline its code descends
    from, so that a combination takes every one of them its changes do not overlap."""

    def __init__(self) -> None:
        self._waiting: dict[str, tuple[Member, Member]] = {}  # commit -> (base, winner)

    def add(self, base: Member, winner: Member) -> None:
        self._waiting[winner.commit] = (base, winner)
        while len(self._waiting) > WINNERS_BUNDLED:
            del self._waiting[next(iter(self._waiting))]

    def bundle(self, files: Files, baseline: Files, *,
               leave_out: Member) -> tuple[Files, list[str]]:
        """`files` (a combination on `baseline`) with the changes of every other winner waiting
        that do not overlap them, and those winners' exp ids. A winner `baseline` already holds
        is let go."""
        bundled = []
        for commit, (base, winner) in list(self._waiting.items()):
            if combine(base.files, baseline, winner.files) == baseline:
                del self._waiting[commit]
                continue
            merged = (combine(base.files, files, winner.files) if commit != leave_out.commit
                      else None)
            if merged is not None and merged != files:
                files = merged
                bundled.append(winner.exp_id)
        return files, bundled

    def members(self) -> list[Member]:
        """The winners and their bases (a resume gives them back their code)."""
        return [member for pair in self._waiting.values() for member in pair]
