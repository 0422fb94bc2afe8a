"""Two winners found at the same time, combined: a three-way merge of their code.

When a candidate beat the baseline it was confirmed against, but another winner replaced that
baseline meanwhile, the two changes were made on the same code and each stands alone. Where they
touch different lines, both can be kept: the candidate's changes are applied on top of the new
baseline (as `git merge` would, line by line, by merge3), and the result is tested like any
candidate. Changes on the same or neighbouring lines overlap, and nothing is combined.
"""

from __future__ import annotations

import merge3

Files = dict[str, str]


def combine(base: Files, ours: Files, theirs: Files) -> Files | None:
    """The files with the changes of both `ours` and `theirs` since `base`, or None when they
    overlap."""
    merged: dict[str, str | None] = {}
    for name in sorted(set(base) | set(ours) | set(theirs)):
        original, mine, other = base.get(name), ours.get(name), theirs.get(name)
        if mine == other or other == original:
            merged[name] = mine
        elif mine == original:
            merged[name] = other
        elif None in (original, mine, other):
            return None  # one side changed a file the other created or deleted
        else:
            lines: list[str] = []
            for group in merge3.Merge3(original.splitlines(True), mine.splitlines(True),
                                       other.splitlines(True)).merge_groups():
                if group[0] == "conflict":
                    return None
                lines += group[1]
            merged[name] = "".join(lines)
    return {name: text for name, text in merged.items() if text is not None}
