"""The run's git repository: experiments as commits, results as notes, the user's repo untouched."""

import os
import subprocess
from pathlib import Path

import pytest

from engine.rundir.repo import GitError, RunRepo, branch_name

FILES = {"train.py": "lr = 0.01\n", "program.md": "# Goal\nλ minimise\n", "lib/util.py": "x = 1\n"}
USER = {"GIT_AUTHOR_NAME": "user", "GIT_AUTHOR_EMAIL": "user@example.com",
        "GIT_COMMITTER_NAME": "user", "GIT_COMMITTER_EMAIL": "user@example.com"}


def git(cwd: Path, *args: str, input: str | None = None) -> str:
    """Run git as the user would in their own repository."""
    done = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **USER}, input=input,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def run(tmp_path) -> tuple[RunRepo, str]:
    """A fresh run repository and its first commit."""
    return RunRepo.create(tmp_path / "run" / "repo.git", FILES, "baseline")


@pytest.fixture
def task_repo(tmp_path) -> Path:
    """A user's repository on branch main, two commits, with uncommitted and untracked changes;
    the task is the folder `task/` inside it."""
    top = tmp_path / "user"
    (top / "task").mkdir(parents=True)
    git(top, "init", "--quiet", "--initial-branch=main")
    (top / "README").write_text("mine\n")
    git(top, "add", "README")
    git(top, "commit", "--quiet", "-m", "first")
    (top / "task" / "train.py").write_text("lr = 0.01\n")
    git(top, "add", "task/train.py")
    git(top, "commit", "--quiet", "-m", "add the task")
    git(top, "branch", "side")
    (top / "README").write_text("mine, edited\n")
    (top / "task" / "scratch.txt").write_text("not committed\n")
    return top


def snapshot(top: Path) -> dict[str, str]:
    """What the user sees of their repository."""
    return {
        "status": git(top, "status", "--porcelain", "--untracked-files=all"),
        "head": git(top, "symbolic-ref", "HEAD"),
        "head_sha": git(top, "rev-parse", "HEAD"),
        "branches": git(top, "for-each-ref", "--format=%(refname) %(objectname)"),
        "readme": (top / "README").read_text(),
    }


def parents_of(repo: RunRepo, sha: str) -> list[str]:
    return git(repo.path, "rev-list", "--parents", "-n", "1", sha).split()[1:]


def test_branch_names_follow_the_run_and_the_island():
    assert branch_name("night-1", None) == "autoresearch/night-1/baseline"
    assert branch_name("night-1", 3) == "autoresearch/night-1/island-3"


def test_a_new_run_repository_holds_exactly_the_given_files(run):
    repo, first = run
    assert repo.files_at(first) == FILES
    assert parents_of(repo, first) == []
    assert git(repo.path, "log", "--format=%s", first) == "baseline"
    assert git(repo.path, "rev-parse", "--is-bare-repository") == "true"
    assert RunRepo(repo.path).files_at(first) == FILES


def test_a_run_repository_cannot_be_created_twice(run):
    repo, _ = run
    with pytest.raises(FileExistsError):
        RunRepo.create(repo.path, FILES, "again")


def test_a_run_repository_that_cannot_be_made_leaves_nothing_behind(tmp_path):
    with pytest.raises(ValueError):
        RunRepo.create(tmp_path / "repo.git", {"../outside.py": "x\n"}, "baseline")
    assert not (tmp_path / "repo.git").exists()


def test_a_commit_applies_the_changes_to_its_parents_tree_and_keeps_the_other_files(run):
    repo, first = run
    second = repo.commit(first, {"train.py": "lr = 0.02\n", "lib/new.py": "y = 2\n"}, "lr up")
    assert repo.files_at(second) == {**FILES, "train.py": "lr = 0.02\n", "lib/new.py": "y = 2\n"}
    assert repo.files_at(first) == FILES
    assert parents_of(repo, second) == [first]
    third = repo.commit(second, {"program.md": "changed\n"}, "goal")
    assert repo.files_at(third) == {**repo.files_at(second), "program.md": "changed\n"}


def test_a_commit_keeps_an_executable_file_executable(run):
    repo, first = run
    script = repo.commit(first, {"run.sh": "#!/bin/sh\n"}, "script")
    # A task's own history can hold executables: make run.sh one, as git would store it.
    lines = [line.replace("100644", "100755", 1) if line.endswith("\trun.sh") else line
             for line in git(repo.path, "ls-tree", script).splitlines()]
    chmod = git(repo.path, "commit-tree", "-p", script, "-m", "chmod +x",
                git(repo.path, "mktree", input="\n".join(lines) + "\n"))
    assert git(repo.path, "ls-tree", chmod, "run.sh").split()[0] == "100755"
    edited = repo.commit(chmod, {"run.sh": "#!/bin/sh\necho hi\n", "train.py": "2\n"}, "edit")
    assert git(repo.path, "ls-tree", edited, "run.sh").split()[0] == "100755"
    assert git(repo.path, "ls-tree", edited, "train.py").split()[0] == "100644"
    assert repo.files_at(edited)["run.sh"] == "#!/bin/sh\necho hi\n"


def test_a_commit_moves_no_branch(run):
    repo, first = run
    repo.set_branch(branch_name("r", None), first)
    repo.commit(first, {"train.py": "lr = 0.5\n"}, "try")
    assert repo.branches() == {"autoresearch/r/baseline": first}


def test_packing_keeps_every_commit_even_those_no_branch_holds(run):
    repo, first = run
    unkept = [repo.commit(first, {"train.py": f"lr = {k}\n"}, f"try {k}") for k in range(5)]
    repo.pack()
    assert not [p for p in (repo.path / "objects").glob("??/*")], "loose objects remain"
    for k, sha in enumerate(unkept):
        assert repo.files_at(sha)["train.py"] == f"lr = {k}\n"


def test_each_packing_packs_only_the_objects_made_since_the_last(run):
    repo, first = run

    def objects_in_packs() -> list[int]:
        counts = []
        for index in sorted((repo.path / "objects" / "pack").glob("*.idx")):
            shown = subprocess.run(["git", "show-index"], stdin=index.open("rb"),
                                   capture_output=True, check=True)
            counts.append(len(shown.stdout.splitlines()))
        return counts

    for round_ in range(3):
        for k in range(4):  # a commit, its tree and its blob each
            repo.commit(first, {"train.py": f"lr = {round_}.{k}\n"}, f"try {round_}.{k}")
        repo.pack()
    # The first pack also holds the first commit's 6 objects; none is packed twice.
    assert sorted(objects_in_packs()) == [12, 12, 18]


def test_paths_outside_the_task_are_refused(run):
    repo, first = run
    for name in ("../evil.py", "/etc/passwd", ".git/config", "a//b.py", "./train.py", ""):
        with pytest.raises(ValueError, match="not a relative path"):
            repo.commit(first, {name: "x\n"}, "bad")


def test_branches_can_be_set_moved_and_read(run):
    repo, first = run
    second = repo.commit(first, {"train.py": "lr = 0.02\n"}, "lr up")
    assert repo.branches() == {}
    assert repo.branch(branch_name("r", 0)) is None
    repo.set_branch(branch_name("r", None), first)
    repo.set_branch(branch_name("r", 0), second)
    repo.set_branch(branch_name("r", 0), first)  # an island reset to the baseline
    repo.set_branch(branch_name("r", None), second)
    assert repo.branch(branch_name("r", None)) == second
    assert repo.branches() == {"autoresearch/r/baseline": second, "autoresearch/r/island-0": first}


def test_notes_are_attached_after_the_fact_and_appended(run):
    repo, first = run
    second = repo.commit(first, {"train.py": "lr = 0.02\n"}, "lr up")
    assert repo.note(second) == ""
    repo.add_note(second, '{"val_bpb": 3.86}')
    repo.add_note(second, '{"val_bpb": 3.84}')
    assert repo.note(second) == '{"val_bpb": 3.86}\n\n{"val_bpb": 3.84}'
    assert repo.note(first) == ""
    assert repo.files_at(second)["train.py"] == "lr = 0.02\n"
    assert git(repo.path, "log", "-1", "--format=%s", second) == "lr up"


def test_files_at_returns_every_file_and_diff_is_git_diff(run):
    repo, first = run
    second = repo.commit(first, {"train.py": "lr = 0.02\n"}, "lr up")
    assert repo.diff(first, second) == (
        "diff --git a/train.py b/train.py\n"
        f"index {git(repo.path, 'rev-parse', '--short=7', f'{first}:train.py')}.."
        f"{git(repo.path, 'rev-parse', '--short=7', f'{second}:train.py')} 100644\n"
        "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-lr = 0.01\n+lr = 0.02\n"
    )
    assert repo.diff(first, second) == git(repo.path, "diff", first, second) + "\n"
    assert repo.diff(first, first) == ""


def test_a_merge_commit_has_the_winners_tree_on_top_of_the_baseline(run):
    repo, first = run
    winner = repo.commit(first, {"train.py": "lr = 0.02\n"}, "lr up")
    other = repo.commit(first, {"program.md": "other\n"}, "elsewhere")
    promoted = repo.merge_commit(winner, [other, winner], "promote lr up")
    assert repo.files_at(promoted) == repo.files_at(winner)
    assert parents_of(repo, promoted) == [other, winner]


def test_the_task_history_is_kept_and_the_task_repository_is_untouched(task_repo, tmp_path):
    before = snapshot(task_repo)
    repo, first = RunRepo.create(tmp_path / "run.git", FILES, "baseline",
                                 history_from=task_repo / "task")
    assert parents_of(repo, first) == [before["head_sha"]]
    assert git(repo.path, "log", "--format=%s", first).splitlines() == [
        "baseline", "add the task", "first"]
    assert repo.files_at(first) == FILES
    assert snapshot(task_repo) == before


def test_a_folder_outside_any_git_repository_gives_a_run_without_history(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "task").mkdir()
    repo, first = RunRepo.create(tmp_path / "run.git", FILES, "baseline",
                                 history_from=tmp_path / "task")
    assert parents_of(repo, first) == []


def test_export_puts_the_runs_branches_into_the_task_repository_and_nothing_else(
        task_repo, tmp_path):
    repo, first = RunRepo.create(tmp_path / "run.git", FILES, "baseline", task_repo / "task")
    island = repo.commit(first, {"train.py": "lr = 0.02\n"}, "lr up")
    repo.set_branch(branch_name("night", None), first)
    repo.set_branch(branch_name("night", 1), island)
    repo.set_branch(branch_name("other-run", None), island)
    before = snapshot(task_repo)
    assert repo.export(task_repo / "task", "night") == [
        "autoresearch/night/baseline", "autoresearch/night/island-1"]
    after = snapshot(task_repo)
    assert git(task_repo, "rev-parse", "autoresearch/night/baseline") == first
    assert git(task_repo, "rev-parse", "autoresearch/night/island-1") == island
    new = {f"refs/heads/autoresearch/night/baseline {first}",
           f"refs/heads/autoresearch/night/island-1 {island}"}
    assert set(after.pop("branches").splitlines()) == set(before.pop("branches").splitlines()) | new
    assert after == before


def test_exporting_again_moves_the_exported_branches_even_backwards(run, tmp_path):
    repo, first = run
    second = repo.commit(first, {"train.py": "lr = 0.02\n"}, "lr up")
    target = tmp_path / "target"
    target.mkdir()
    git(target, "init", "--quiet")
    repo.set_branch(branch_name("night", 0), second)
    repo.export(target, "night")
    repo.set_branch(branch_name("night", 0), first)
    repo.export(target, "night")
    assert git(target, "rev-parse", "autoresearch/night/island-0") == first


def test_export_never_moves_the_branch_the_user_has_checked_out(task_repo, tmp_path):
    repo, first = RunRepo.create(tmp_path / "run.git", FILES, "baseline", task_repo / "task")
    repo.set_branch(branch_name("night", None), first)
    repo.export(task_repo, "night")
    git(task_repo, "stash", "--include-untracked", "--quiet")
    git(task_repo, "switch", "--quiet", "autoresearch/night/baseline")
    repo.set_branch(branch_name("night", None), repo.commit(first, {"train.py": "2\n"}, "next"))
    with pytest.raises(GitError, match="checked out"):
        repo.export(task_repo, "night")
    assert git(task_repo, "rev-parse", "HEAD") == first


def test_export_to_a_folder_outside_any_git_repository_says_so(run, tmp_path, monkeypatch):
    repo, _ = run
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "plain").mkdir()
    with pytest.raises(GitError, match="not in a git repository"):
        repo.export(tmp_path / "plain", "night")


def test_commits_and_notes_work_on_a_machine_without_git_identity(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                 "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)
    repo, first = RunRepo.create(tmp_path / "run.git", FILES, "baseline")
    second = repo.commit(first, {"train.py": "lr = 0.02\n"}, "lr up")
    repo.add_note(second, "ok")
    assert repo.note(second) == "ok"
    shown = subprocess.run(["git", "--git-dir", str(repo.path), "log", "-1", "--format=%an <%ae>",
                            second], capture_output=True, text=True, check=True).stdout
    assert shown.strip() == "autoresearch <autoresearch@localhost>"


def test_variables_pointing_git_elsewhere_are_ignored(run, tmp_path, monkeypatch):
    repo, first = run
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "elsewhere.index"))
    second = repo.commit(first, {"train.py": "lr = 0.02\n"}, "lr up")
    assert repo.files_at(second)["train.py"] == "lr = 0.02\n"
    assert not (tmp_path / "elsewhere.index").exists()


def test_a_failing_git_command_is_named_in_the_error(run):
    repo, first = run
    named = r"`git .* update-ref 'refs/heads/no good name' \w+` failed with status 128: .*bad name"
    with pytest.raises(GitError, match=named):
        repo.set_branch("no good name", first)
    with pytest.raises(GitError, match=r"`git .*ls-tree .*` failed"):
        repo.files_at("0" * 40)


def test_opening_a_folder_that_is_no_repository_fails(tmp_path):
    with pytest.raises(GitError):
        RunRepo(tmp_path)
