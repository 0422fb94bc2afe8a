"""Apply a model's reply to a task's files: SEARCH/REPLACE blocks, or whole files in fences.

The block format is the one aider and AlphaEvolve-style systems ask models for:

    train.py
    <<<<<<< SEARCH
    LEARNING_RATE = 3e-3
    =======
    LEARNING_RATE = 1e-3
    >>>>>>> REPLACE

The file is named on the line above the block (past blank lines and fences, markdown and a
leading folder forgiven) or in the fence's info string. A block with no name edits the file of
the block right before it, or else the one file its SEARCH text matches.

Models get the details wrong in predictable ways, so matching forgives them, strictest first:
trailing white space, a block indented by a constant offset from the file (the replacement is
re-indented by the same offset), blank lines added at the edges of SEARCH, markers of 5 to 9
characters. It never forgives ambiguity: a SEARCH text must match exactly one place.

An empty SEARCH creates a file, or fills an empty one; on a file with content it is an error,
because the model cannot have meant to append at a place it did not show.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
DIVIDER = re.compile(r"^\s*={5,9}\s*$")
REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*(.*?)\s*$")
FILE_NAME = re.compile(r"^[\w./-]*\w\.\w+$")  # a name with an extension, perhaps with a folder
TOP_LEVEL_NAME = re.compile(r"^(?:def|class)\s+(\w+)|^(\w+)\s*[:=]", re.MULTILINE)

Match = tuple[int, int, list[str]]  # first line, line after the last, the replacement lines


class EditError(ValueError):
    """A reply that cannot be applied; the message says why in a sentence or two."""


@dataclass(frozen=True)
class Block:
    """One SEARCH/REPLACE block as the reply wrote it."""

    name: str | None  # the file name written before it, cleaned; None when the reply gave none
    search: list[str]
    replace: list[str]


def apply_edits(files: dict[str, str], reply: str) -> dict[str, str]:
    """The new contents of every file the reply changes (relative path -> text).

    Blocks apply in order, each to the result of the ones before. A reply without blocks may
    instead give whole files in fences. Raises EditError when the reply cannot be applied.
    """
    blocks = parse_blocks(reply)
    if not blocks:
        return _whole_files(files, reply)
    work = dict(files)
    for block in blocks:
        name = _target(block, work)
        work[name] = _apply(name, work.get(name), block)
    return {name: text for name, text in work.items() if files.get(name) != text}


def parse_blocks(reply: str) -> list[Block]:
    """The SEARCH/REPLACE blocks of a reply, in order."""
    lines = reply.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if SEARCH.match(lines[i]):
            name = _name_before(lines, i, blocks[-1].name if blocks else None)
            divider = _closing(lines, i, DIVIDER, "=======")
            end = _closing(lines, divider, REPLACE, ">>>>>>> REPLACE")
            blocks.append(Block(name, lines[i + 1:divider], lines[divider + 1:end]))
            i = end
        i += 1
    return blocks


def _closing(lines: list[str], opened: int, marker: re.Pattern, shown: str) -> int:
    """The index of the marker that continues the block whose previous marker is on `opened`."""
    for j in range(opened + 1, len(lines)):
        if marker.match(lines[j]):
            return j
        if SEARCH.match(lines[j]) or DIVIDER.match(lines[j]) or REPLACE.match(lines[j]):
            break
    raise EditError(f"A SEARCH/REPLACE block has no {shown} line after line {opened + 1} "
                    f"of the reply.")


def _name_before(lines: list[str], i: int, previous: str | None) -> str | None:
    """The file name written above the SEARCH marker on line i, looking past blanks and fences.

    A block that follows another with nothing but blanks and fences between edits the same file.
    """
    for line in reversed(lines[:i]):
        fence = FENCE.match(line)
        if fence:
            named = [_clean(word) for word in fence.group(2).split()]
            named = [word for word in named if FILE_NAME.match(word)]
            if named:
                return named[-1]
        elif REPLACE.match(line):
            return previous
        elif line.strip():
            return _clean(line) if FILE_NAME.match(_clean(line)) else None
    return None


def _clean(name: str) -> str:
    """A file name without the markdown around it: `train.py`, **train.py**, # train.py:"""
    return name.strip(" \t#*`'\":").removeprefix("./")


def _resolve(name: str, known: dict[str, str]) -> str | None:
    """The known file a written name means: itself, or the one path it is a suffix of or ends in."""
    if name in known:
        return name
    suffixes = [k for k in known if name.endswith("/" + k) or k.endswith("/" + name)]
    return suffixes[0] if len(suffixes) == 1 else None


def _target(block: Block, work: dict[str, str]) -> str:
    """The file a block edits: the one it names, a new one, or the only one its SEARCH matches."""
    if block.name is not None:
        known = _resolve(block.name, work)
        if known is not None or _is_blank(block.search):
            return known or block.name
        raise EditError(f"The reply edits {block.name}, which is not one of the files: "
                        f"{', '.join(sorted(work))}.")
    if _is_blank(block.search):
        raise EditError("A block with an empty SEARCH names no file to create.")
    hits = [name for name, text in work.items() if _matches(_split(text)[0], block)]
    if len(hits) != 1:
        which = ", ".join(sorted(hits or work))
        raise EditError(f"A block names no file, and its SEARCH text starting "
                        f"{_first(block.search)!r} matches {'several' if hits else 'none'} "
                        f"of them: {which}.")
    return hits[0]


def _apply(name: str, text: str | None, block: Block) -> str:
    """The text of file `name` after one block; `text` is None for a file that does not exist."""
    if _is_blank(block.search):
        if text:
            raise EditError(f"A block with an empty SEARCH edits {name}, which already has "
                            f"content; an empty SEARCH only creates a file.")
        return "\n".join(block.replace) + "\n" if block.replace else ""
    assert text is not None  # _target only returns a new name for an empty SEARCH
    lines, eol = _split(text)
    found = _matches(lines, block)
    if not found:
        raise EditError(f"In {name}, the SEARCH text starting {_first(block.search)!r} "
                        f"was not found.")
    if len(found) > 1:
        raise EditError(f"In {name}, the SEARCH text starting {_first(block.search)!r} occurs "
                        f"{len(found)} times; include more lines to make it unique.")
    start, end, replacement = found[0]
    return eol.join(lines[:start] + replacement + lines[end:])


def _matches(lines: list[str], block: Block) -> list[Match]:
    """Where the block's SEARCH matches, at the strictest level that finds any: as written, then
    without the blank lines at the edges of SEARCH and REPLACE."""
    for search, replace in ((block.search, block.replace),
                            (_trim(block.search), _trim(block.replace))):
        n = len(search)
        for key in (list, _without_trailing_space, _dedent):  # strictest first
            wanted = key(search)
            found = [(i, i + n, _reindent(replace, search, lines[i:i + n]))
                     for i in range(len(lines) - n + 1) if key(lines[i:i + n]) == wanted]
            if found:
                return found
    return []


def _without_trailing_space(lines: list[str]) -> list[str]:
    return [line.rstrip() for line in lines]


def _dedent(lines: list[str]) -> list[str]:
    width = len(_indent(lines))
    return [line[width:].rstrip() for line in lines]


def _indent(lines: list[str]) -> str:
    """The indentation all non-blank lines share."""
    return os.path.commonprefix([line[:len(line) - len(line.lstrip())]
                                 for line in lines if line.strip()])


def _reindent(replace: list[str], search: list[str], window: list[str]) -> list[str]:
    """The replacement moved by the offset between the SEARCH text and the lines it matched."""
    old, new = _indent(search), _indent(window)
    return [_shift(line, old, new) for line in replace]


def _shift(line: str, old: str, new: str) -> str:
    """One replacement line moved from the SEARCH text's indentation to the file's."""
    if old == new or not line.strip():
        return line
    if line.startswith(old):
        return new + line[len(old):]
    # Indented less than the SEARCH block: there is no prefix to swap, so shift its width.
    width = len(line) - len(line.lstrip()) + len(new) - len(old)
    return " " * max(0, width) + line.lstrip()


def _whole_files(files: dict[str, str], reply: str) -> dict[str, str]:
    """Files given whole in fences: named by the fence or the line above it, or a lone fence
    that reads as a new version of exactly one file."""
    fences = _fenced(reply)
    given: dict[str, list[str]] = {}
    for labels, body in fences:
        named = [name for label in labels if (name := _resolve(_clean(label), files))]
        if named:
            given[named[0]] = body
    if not given and len(fences) == 1:
        body = fences[0][1]
        alike = [name for name, text in files.items() if _reads_as("\n".join(body), text)]
        given = {alike[0]: body} if len(alike) == 1 else {}
    if not given:
        raise EditError("The reply holds no SEARCH/REPLACE block and no whole file.")
    new = {name: _join(body, files[name]) for name, body in given.items()}
    return {name: text for name, text in new.items() if files[name] != text}


def _join(body: list[str], old: str) -> str:
    """A whole file's new lines as text, with the old text's line ending and final newline."""
    eol = _split(old)[1]
    return eol.join(body) + (eol if old.endswith(eol) else "")


def _fenced(reply: str) -> list[tuple[list[str], list[str]]]:
    """The reply's fenced blocks: the words that may name each (its info string, the line above
    it and that line's last word) and its lines."""
    lines = reply.splitlines()
    fences = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening:
            close = next((j for j in range(i + 1, len(lines))
                          if lines[j].strip() == opening.group(1)), len(lines))
            above = lines[i - 1] if i else ""
            fences.append(([*opening.group(2).split(), above, *above.split()[-1:]],
                           lines[i + 1:close]))
            i = close
        i += 1
    return fences


def _reads_as(body: str, text: str) -> bool:
    """Whether body reads as a new version of text: at least half as long, with the same first
    line or most of the same top-level names."""
    if len(body) < len(text) / 2:
        return False
    if _first(body.splitlines()) == _first(text.splitlines()):
        return True
    names = _top_level_names(text)
    return bool(names) and 2 * len(names & _top_level_names(body)) > len(names)


def _top_level_names(text: str) -> set[str]:
    return {a or b for a, b in TOP_LEVEL_NAME.findall(text)}


def _split(text: str) -> tuple[list[str], str]:
    """The lines of a text and its line ending; joining them gives the text back byte for byte."""
    eol = "\r\n" if "\r\n" in text else "\n"
    return text.split(eol), eol


def _first(lines: list[str]) -> str:
    return next((line.strip() for line in lines if line.strip()), "")


def _is_blank(lines: list[str]) -> bool:
    return not any(line.strip() for line in lines)


def _trim(lines: list[str]) -> list[str]:
    """The lines without the blank ones at either end."""
    kept = [i for i, line in enumerate(lines) if line.strip()]
    return lines[kept[0]:kept[-1] + 1] if kept else []
