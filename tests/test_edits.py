"""Applying a model's reply to the task's files: SEARCH/REPLACE blocks in the shapes models write
them, whole files in fences, and a clear error for anything that cannot be applied."""

import re
from pathlib import Path

import pytest

from agents.edits import EditError, apply_edits

TRAIN = '''"""A tiny training program."""

import math

LEARNING_RATE = 3e-3
BATCH_SIZE = 16


def schedule(step, total):
    if step < 10:
        return LEARNING_RATE * step / 10
    return LEARNING_RATE * math.cos(step / total)


def train():
    for step in range(100):
        lr = schedule(step, 100)
        print(step, lr)
'''
PREPARE = '''"""The fixed harness."""

SEED = 0
'''
FILES = {"train.py": TRAIN, "prepare.py": PREPARE}


def block(search: str, replace: str, name: str = "train.py") -> str:
    return f"{name}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def test_an_exact_block_replaces_its_lines():
    changed = apply_edits(FILES, block("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3"))
    assert changed == {"train.py": TRAIN.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-3")}


def test_only_changed_files_are_returned():
    changed = apply_edits(FILES, block("BATCH_SIZE = 16", "BATCH_SIZE = 32"))
    assert list(changed) == ["train.py"]


def test_the_rest_of_the_file_is_kept_byte_for_byte():
    files = {"train.py": "A = 1\r\nB = 2  \r\nC = 3"}  # CRLF, trailing space, no final newline
    changed = apply_edits(files, block("B = 2", "B = 20"))
    assert changed == {"train.py": "A = 1\r\nB = 20\r\nC = 3"}


def test_trailing_white_space_differences_are_forgiven():
    reply = block("LEARNING_RATE = 3e-3   \nBATCH_SIZE = 16\t", "LEARNING_RATE = 1e-3")
    changed = apply_edits(FILES, reply)
    assert changed["train.py"] == TRAIN.replace("LEARNING_RATE = 3e-3\nBATCH_SIZE = 16",
                                                "LEARNING_RATE = 1e-3")


def test_a_block_written_without_indentation_matches_code_inside_a_function():
    search = "if step < 10:\n    return LEARNING_RATE * step / 10"
    replace = "if step < 20:\n    return LEARNING_RATE * step / 20"
    changed = apply_edits(FILES, block(search, replace))
    assert changed["train.py"] == TRAIN.replace(
        "    if step < 10:\n        return LEARNING_RATE * step / 10",
        "    if step < 20:\n        return LEARNING_RATE * step / 20")


def test_a_block_indented_more_than_the_file_is_shifted_back():
    search = "        for step in range(100):\n            lr = schedule(step, 100)"
    replace = "        for step in range(200):\n            lr = schedule(step, 200)"
    changed = apply_edits(FILES, block(search, replace))
    assert changed["train.py"] == TRAIN.replace(
        "    for step in range(100):\n        lr = schedule(step, 100)",
        "    for step in range(200):\n        lr = schedule(step, 200)")


def test_blank_lines_added_around_the_search_text_are_forgiven():
    changed = apply_edits(FILES, block("\nBATCH_SIZE = 16\n\n", "\nBATCH_SIZE = 32\n\n"))
    assert changed["train.py"] == TRAIN.replace("BATCH_SIZE = 16", "BATCH_SIZE = 32")


def test_search_text_leaving_out_the_blank_lines_around_it_keeps_them():
    search = "def train():\n    for step in range(100):"
    replace = "def train(steps=100):\n    for step in range(steps):"
    changed = apply_edits(FILES, block(search, replace))
    assert changed["train.py"] == TRAIN.replace(search, replace)


def test_an_empty_replace_deletes_the_lines():
    reply = "train.py\n<<<<<<< SEARCH\n        print(step, lr)\n=======\n>>>>>>> REPLACE\n"
    changed = apply_edits(FILES, reply)
    assert changed["train.py"] == TRAIN.replace("        print(step, lr)\n", "")


def test_several_blocks_apply_in_order_each_seeing_the_last():
    reply = (block("BATCH_SIZE = 16", "BATCH_SIZE = 32")
             + block("BATCH_SIZE = 32", "BATCH_SIZE = 64"))
    assert apply_edits(FILES, reply)["train.py"] == TRAIN.replace("= 16", "= 64")


def test_a_block_right_after_another_without_a_name_edits_the_same_file():
    files = {"train.py": "A = 1\nB = 2\n", "prepare.py": "B = 2\n"}
    reply = block("A = 1", "A = 10")
    reply += "\n```\n<<<<<<< SEARCH\nB = 2\n=======\nB = 20\n>>>>>>> REPLACE\n"
    assert apply_edits(files, reply) == {"train.py": "A = 10\nB = 20\n"}


def test_blocks_for_two_files_change_both():
    reply = block("BATCH_SIZE = 16", "BATCH_SIZE = 32") + block("SEED = 0", "SEED = 1",
                                                                 "prepare.py")
    assert apply_edits(FILES, reply) == {"train.py": TRAIN.replace("= 16", "= 32"),
                                         "prepare.py": PREPARE.replace("= 0", "= 1")}


def test_a_block_inside_a_python_fence_with_the_name_above_it():
    reply = ("Lower the learning rate.\n\ntrain.py\n```python\n<<<<<<< SEARCH\n"
             "LEARNING_RATE = 3e-3\n=======\nLEARNING_RATE = 1e-3\n>>>>>>> REPLACE\n```\n")
    assert apply_edits(FILES, reply)["train.py"] == TRAIN.replace("3e-3", "1e-3")


def test_a_block_inside_a_fence_whose_info_string_names_the_file():
    reply = ("```python train.py\n<<<<<<< SEARCH\nSEED = 0\n=======\nSEED = 1\n"
             ">>>>>>> REPLACE\n```\n")
    files = {"train.py": "SEED = 0\n", "prepare.py": "SEED = 0\n"}
    assert apply_edits(files, reply) == {"train.py": "SEED = 1\n"}


@pytest.mark.parametrize("written", ["`train.py`", "**train.py**", "task/train.py",
                                     "./train.py", "# train.py", "train.py:"])
def test_the_file_name_may_carry_markdown_or_a_folder(written):
    changed = apply_edits(FILES, block("BATCH_SIZE = 16", "BATCH_SIZE = 32", written))
    assert changed == {"train.py": TRAIN.replace("= 16", "= 32")}


def test_without_a_file_name_the_only_file_the_search_matches_is_edited():
    reply = "<<<<<<< SEARCH\nSEED = 0\n=======\nSEED = 7\n>>>>>>> REPLACE\n"
    assert apply_edits(FILES, reply) == {"prepare.py": PREPARE.replace("= 0", "= 7")}


def test_without_a_file_name_a_search_matching_two_files_is_refused():
    files = {"a.py": "X = 1\n", "b.py": "X = 1\n"}
    reply = "<<<<<<< SEARCH\nX = 1\n=======\nX = 2\n>>>>>>> REPLACE\n"
    with pytest.raises(EditError, match="names no file.*matches several of them: a.py, b.py"):
        apply_edits(files, reply)


def test_markers_of_five_to_nine_characters_and_trailing_spaces_are_accepted():
    reply = ("train.py\n<<<<< SEARCH\nBATCH_SIZE = 16\n=========\nBATCH_SIZE = 32\n"
             ">>>>>>>>> REPLACE  \n")
    assert apply_edits(FILES, reply) == {"train.py": TRAIN.replace("= 16", "= 32")}


def test_an_unknown_file_is_refused_naming_the_known_files():
    with pytest.raises(EditError, match=r"model\.py.*not one of the files: prepare\.py, train\.py"):
        apply_edits(FILES, block("BATCH_SIZE = 16", "BATCH_SIZE = 32", "model.py"))


def test_search_text_not_found_is_refused_naming_the_file_and_its_first_line():
    with pytest.raises(EditError) as refused:
        apply_edits(FILES, block("\nBATCH_SIZE = 8\nWARMUP = 10", "BATCH_SIZE = 32"))
    assert str(refused.value) == ("In train.py, the SEARCH text starting 'BATCH_SIZE = 8' "
                                  "was not found.")


def test_search_text_matching_twice_is_refused_as_ambiguous():
    files = {"train.py": "def a():\n    return 1\n\n\ndef b():\n    return 1\n"}
    with pytest.raises(EditError, match=re.escape("'return 1' occurs 2 times")):
        apply_edits(files, block("return 1", "return 2"))


def test_a_failing_block_applies_none_of_the_reply():
    reply = block("BATCH_SIZE = 16", "BATCH_SIZE = 32") + block("NOT_THERE = 1", "X = 2")
    with pytest.raises(EditError):
        apply_edits(FILES, reply)


def test_a_block_without_its_replace_marker_is_refused():
    with pytest.raises(EditError, match="has no >>>>>>> REPLACE line"):
        apply_edits(FILES, "train.py\n<<<<<<< SEARCH\nSEED = 0\n=======\nSEED = 1\n")


def test_an_empty_search_creates_a_new_file():
    changed = apply_edits(FILES, block("", "def helper():\n    return 1", "helpers.py"))
    assert changed == {"helpers.py": "def helper():\n    return 1\n"}


def test_an_empty_search_on_a_file_with_content_is_refused():
    with pytest.raises(EditError, match="empty SEARCH edits train.py, which already has content"):
        apply_edits(FILES, block("", "X = 1"))


def test_a_reply_that_changes_nothing_returns_no_files():
    assert apply_edits(FILES, block("BATCH_SIZE = 16", "BATCH_SIZE = 16")) == {}


def test_a_fenced_whole_file_named_above_its_fence_replaces_that_file():
    new = TRAIN.replace("= 16", "= 32")
    reply = f"Here is the new version.\n\n**train.py**\n```python\n{new}```\n"
    assert apply_edits(FILES, reply) == {"train.py": new}


def test_a_lone_unnamed_fence_that_reads_as_a_whole_file_replaces_it():
    new = TRAIN.replace("= 16", "= 32")
    reply = f"I doubled the batch size:\n\n```python\n{new}```\n"
    assert apply_edits(FILES, reply) == {"train.py": new}


def test_a_lone_fence_with_only_a_snippet_is_not_taken_for_a_whole_file():
    reply = "Try this:\n\n```python\nBATCH_SIZE = 32\n```\n"
    with pytest.raises(EditError, match="no SEARCH/REPLACE block and no whole file"):
        apply_edits(FILES, reply)


def test_a_reply_with_neither_blocks_nor_code_is_refused():
    with pytest.raises(EditError) as refused:
        apply_edits(FILES, "I think the learning rate is too high.")
    assert str(refused.value) == "The reply holds no SEARCH/REPLACE block and no whole file."


def test_the_bundled_templates_learning_rate_can_be_changed():
    template = (Path(__file__).parents[1] / "train_template" / "train.py").read_text()
    reply = ("I will lower the peak learning rate.\n\ntrain.py\n```python\n<<<<<<< SEARCH\n"
             "BATCH_SIZE = 16\nLEARNING_RATE = 3e-3\n=======\nBATCH_SIZE = 16\n"
             "LEARNING_RATE = 1e-3\n>>>>>>> REPLACE\n```\n")
    changed = apply_edits({"train.py": template}, reply)
    assert changed == {"train.py": template.replace("LEARNING_RATE = 3e-3",
                                                    "LEARNING_RATE = 1e-3", 1)}
