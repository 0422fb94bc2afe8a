"""Winners found at once, combined: a three-way merge of their files."""

from engine.search.combine import combine

BASE = {"train.py": "A = 1\nB = 2\nC = 3\nD = 4\n", "prepare.py": "fixed\n"}


def edited(**values) -> dict[str, str]:
    lines = BASE["train.py"].splitlines(keepends=True)
    for k, name in enumerate("ABCD"):
        if name in values:
            lines[k] = f"{name} = {values[name]}\n"
    return {**BASE, "train.py": "".join(lines)}


def test_changes_to_lines_apart_are_both_kept():
    assert combine(BASE, edited(A=10), edited(D=40)) == edited(A=10, D=40)


def test_changes_to_the_same_or_neighbouring_lines_overlap():
    assert combine(BASE, edited(A=10), edited(A=11)) is None
    assert combine(BASE, edited(A=10), edited(B=20)) is None


def test_the_same_change_on_both_sides_is_kept_once():
    assert combine(BASE, edited(A=10), edited(A=10)) == edited(A=10)


def test_a_file_only_one_side_changed_or_added_is_taken_from_it():
    theirs = {**edited(D=40), "model.py": "new\n"}
    assert combine(BASE, edited(A=10), theirs) == {**edited(A=10, D=40), "model.py": "new\n"}


def test_a_file_one_side_deleted_and_the_other_changed_overlaps():
    ours = {"train.py": BASE["train.py"]}
    assert combine(BASE, ours, {**BASE, "prepare.py": "changed\n"}) is None


def test_where_both_changed_the_same_lines_theirs_first_takes_theirs_and_keeps_our_others():
    # The baseline moved A a little and changed D; the winner moved A further.
    combined = combine(BASE, edited(A=10, D=40), edited(A=20), theirs_first=True)
    assert combined == edited(A=20, D=40)
    ours = {"train.py": BASE["train.py"]}  # prepare.py deleted here, changed there
    assert combine(BASE, ours, {**BASE, "prepare.py": "changed\n"}, theirs_first=True) == {
        **BASE, "prepare.py": "changed\n"}
