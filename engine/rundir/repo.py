"""The git repository of one search run: every experiment is a commit, its result a git note.

The repository is bare and lives inside the run directory (RUN_DIR/repo.git), so that resuming,
reporting and reproducing a run need nothing but that directory. The user's own repository is
only read (its history is fetched from it when the run starts) or, when asked, given the run's
branches by `export`; its working tree, HEAD and other branches are never touched.

Commits are made in-process with libgit2 (pygit2): blobs, an in-memory index over the parent's
tree, its tree and the commit, about 1 ms, where the same plumbing as git processes (hash-object,
update-index, write-tree, commit-tree and ls-tree) took 11 ms on an idle 2-core machine and 30 on
a busy one; the driver makes one commit per experiment. Everything else (notes, branches,
fetching, packing, reading) is done by git itself, on the same repository.

File contents are text, stored as UTF-8; bytes that are not UTF-8 (in a task's history, say)
come back from `files_at` through `surrogateescape` and are stored again unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pygit2

BRANCH_PREFIX = "autoresearch"
NOTES_REF = "refs/notes/commits"
IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch",
    "GIT_AUTHOR_EMAIL": "autoresearch@localhost",
    "GIT_COMMITTER_NAME": "autoresearch",
    "GIT_COMMITTER_EMAIL": "autoresearch@localhost",
}
# What `git rev-parse --local-env-vars` lists: variables that point git at another repository,
# index or object store. A parent process (a git hook, an editor) may have exported them, and
# they would redirect every command below.
_REPOSITORY_VARIABLES = frozenset({
    "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE", "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE", "GIT_INDEX_FILE", "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX", "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
})
_REGULAR_MODES = (b"100644", b"100755")
_SIGNATURE = (IDENTITY["GIT_AUTHOR_NAME"], IDENTITY["GIT_AUTHOR_EMAIL"])
_EXECUTABLE = pygit2.enums.FileMode.BLOB_EXECUTABLE


class GitError(RuntimeError):
    """A git command failed; the message names the command and git's stderr."""


def branch_name(run: str, island: int | None) -> str:
    """`autoresearch/<run>/baseline` for None, `autoresearch/<run>/island-<k>` for island k."""
    return f"{BRANCH_PREFIX}/{run}/" + ("baseline" if island is None else f"island-{island}")


class RunRepo:
    """The bare repository of one run. Methods take and return full commit shas."""

    def __init__(self, path: Path) -> None:
        """Open an existing run repository."""
        self.path = Path(path).resolve()
        if not self.path.is_dir():
            raise GitError(f"{self.path} is not a run repository: no such folder")
        self._git("rev-parse", "--git-dir")
        self._objects = pygit2.Repository(str(self.path))  # where commits are made

    @classmethod
    def create(cls, path: Path, files: dict[str, str], message: str,
               history_from: Path | None = None) -> tuple[RunRepo, str]:
        """Make a new bare repository at `path` whose first commit holds exactly `files`
        (relative path -> text). When `history_from` is a folder inside a git work tree (the
        user's task folder), that repository's HEAD history is fetched into the run repository
        (read-only for the user's repository: git fetch from it, nothing written there) and
        becomes the parent of the first commit, so the task's history is kept. Returns the repo
        and the sha of the first commit."""
        path = Path(path).resolve()
        if path.exists():
            raise FileExistsError(f"{path} already exists; open it with RunRepo instead")
        task = _task_head(Path(history_from)) if history_from is not None else None
        path.parent.mkdir(parents=True, exist_ok=True)
        # An empty template: no sample hooks, nothing but the repository itself.
        _git(["init", "--quiet", "--bare", "--template=", str(path)], cwd=path.parent)
        try:
            repo = cls(path)
            # Experiments that no branch keeps are reachable from nothing (notes do not keep
            # their commits alive), yet reports and reproductions need every one: nothing is
            # ever pruned, and nothing is collected behind the driver's back.
            repo._git("config", "gc.auto", "0")
            repo._git("config", "gc.pruneExpire", "never")
            parents = []
            if task is not None:
                top, head = task
                # Fetching by sha needs protocol v2 (v0 serves only advertised refs); git >= 2.26
                # uses it by default, but a user's config may say otherwise.
                repo._git("-c", "protocol.version=2", "fetch", "--quiet", "--no-tags",
                          "--no-write-fetch-head", "--no-auto-gc", "--no-recurse-submodules",
                          str(top), head)
                parents.append(head)
            return repo, repo._commit_tree(repo._tree(None, files), parents, message)
        except BaseException:
            # A half-made repository would only make the next attempt refuse the path.
            shutil.rmtree(path, ignore_errors=True)
            raise

    def commit(self, parent: str, changes: dict[str, str], message: str) -> str:
        """A new commit on top of `parent` whose tree is the parent's tree with `changes` applied
        (relative path -> new text; other files unchanged). Does not move any branch."""
        return self._commit_tree(self._tree(parent, changes), [parent], message)

    def merge_commit(self, tree_of: str, parents: list[str], message: str) -> str:
        """A commit with the tree of commit `tree_of` and the given parents (used for promotion:
        the winner's tree on top of the baseline, parents [baseline head, winner])."""
        return self._commit_tree(tree_of, parents, message)

    def set_branch(self, name: str, sha: str) -> None:
        """Point branch `name` at commit `sha`, creating it or moving it wherever it was."""
        self._git("update-ref", f"refs/heads/{name}", sha)

    def branch(self, name: str) -> str | None:
        """The sha a branch points at, or None."""
        found = self._git("rev-parse", "--verify", "--quiet", f"refs/heads/{name}^{{commit}}",
                          ok=(0, 1))
        return found.stdout.decode().strip() or None

    def branches(self) -> dict[str, str]:
        """Every branch -> sha."""
        listing = self._git("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/")
        pairs = (line.split(" ", 1) for line in listing.stdout.decode().splitlines())
        return {ref.removeprefix("refs/heads/"): sha for sha, ref in pairs}

    def add_note(self, sha: str, text: str) -> None:
        """Attach (or append to) a git note on a commit: the experiment's result, known only after
        the commit was made (git notes under refs/notes/commits, appended after a blank line,
        never rewriting the commit)."""
        self._git("notes", f"--ref={NOTES_REF}", "append", "-F", "-", sha, input=_encode(text))

    def note(self, sha: str) -> str:
        """The note of a commit (the texts added, separated by blank lines), or ''."""
        shown = self._git("notes", f"--ref={NOTES_REF}", "show", sha, ok=(0, 1))
        # Status 1 is git's "no note found for object"; a name git cannot resolve gives 128.
        return _decode(shown.stdout).removesuffix("\n") if shown.returncode == 0 else ""

    def pack(self) -> None:
        """Put every loose object into a new pack, unreachable ones too (runs make thousands of
        small commits that no branch keeps; loose, they cost 7 files each). Safe while commits
        are being made: an object is deleted only once a pack holds it."""
        # The loose objects are the files objects/xx/yyyy...: listed from there, a pack holds
        # only what the last one did not (git's own listings name packed objects too).
        objects = self.path / "objects"
        loose = [folder.name + path.name for folder in objects.glob("[0-9a-f][0-9a-f]")
                 for path in folder.iterdir() if not path.name.startswith("tmp")]
        if not loose:
            return
        self._git("pack-objects", "-q", str(objects / "pack" / "pack"),
                  input="".join(sha + "\n" for sha in loose).encode())
        self._git("prune-packed", "-q")

    def noted(self) -> set[str]:
        """Every commit that has a note."""
        listing = self._git("notes", f"--ref={NOTES_REF}", "list", ok=(0, 1))
        return {line.split()[1] for line in listing.stdout.decode().splitlines() if line}

    def merges_on(self, branch: str) -> dict[str, str]:
        """Along the first parents of `branch`: each merged commit -> the merge commit that
        brought it in (the promotions of a baseline branch)."""
        listing = self._git("rev-list", "--first-parent", "--parents", f"refs/heads/{branch}",
                            ok=(0, 128))
        merges = {}
        for line in listing.stdout.decode().splitlines():
            shas = line.split()
            if len(shas) == 3:
                merges[shas[2]] = shas[0]
        return merges

    def files_at(self, sha: str) -> dict[str, str]:
        """Every file of a commit (relative path -> text). Symbolic links and submodules are not
        files and are left out."""
        entries = [(name, oid) for name, (mode, oid) in self._entries(sha).items()
                   if mode in _REGULAR_MODES]
        if not entries:
            return {}
        batch = self._git("cat-file", "--batch", input=b"".join(oid + b"\n" for _, oid in entries))
        files, out, at = {}, batch.stdout, 0
        for name, _ in entries:
            # Each object comes as "<oid> <type> <size>\n<content>\n".
            header_end = out.index(b"\n", at)
            size = int(out[at:header_end].split()[2])
            files[_decode(name)] = _decode(out[header_end + 1 : header_end + 1 + size])
            at = header_end + 1 + size + 1
        return files

    def diff(self, parent: str, child: str) -> str:
        """Unified diff (git diff parent child)."""
        # diff-tree is the plumbing behind `git diff`: the same output, without the user's
        # porcelain settings (colour, external diff tools, prefixes) leaking into it.
        shown = self._git("diff-tree", "-p", "--no-color", parent, child)
        return shown.stdout.decode(errors="replace")

    def export(self, target: Path, run: str) -> list[str]:
        """Copy this run's branches (`autoresearch/<run>/*`) into the git repository at `target`
        (the user's task repository) under the same names, moving any that are there already,
        without touching its working tree, HEAD or other branches. Returns the branch names
        exported. Raises GitError with a clear message when `target` is not in a git repository,
        and when one of the run's branches is checked out there."""
        target = Path(target)
        if not target.is_dir():
            raise GitError(f"cannot export the run's branches to {target}: no such folder")
        found = _git(["rev-parse", "--git-dir"], cwd=target, ok=(0, 128))
        if found.returncode != 0:
            raise GitError(f"cannot export the run's branches to {target}: it is not in a git "
                           f"repository ({found.stderr.decode().strip()})")
        prefix = f"{BRANCH_PREFIX}/{run}/"
        names = sorted(name for name in self.branches() if name.startswith(prefix))
        if names:
            # A fetch run in the target, rather than a push into it: no hooks of the user's run,
            # and fetch refuses to move a branch that is checked out in any of its work trees.
            # "+" because a run's branches may move backwards (an island reset to the baseline).
            _git(["fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc",
                  "--no-recurse-submodules", "--no-prune", str(self.path),
                  f"+refs/heads/{prefix}*:refs/heads/{prefix}*"], cwd=target)
        return names

    def _tree(self, base: str | None, changes: dict[str, str]) -> str:
        """The tree of commit `base` (or the empty tree) with `changes` written over it."""
        for name in changes:
            _checked_path(name)
        with self._libgit2(f"writing the tree of {len(changes)} changed files on {base}"):
            index = pygit2.Index()  # in memory: no file, no working tree
            if base is not None:
                index.read_tree(self._objects.revparse_single(base).peel(pygit2.Tree))
            for name, text in changes.items():
                # An executable file stays executable; anything else becomes a regular file.
                # The blob holds the bytes as given, whatever .gitattributes say.
                mode = (_EXECUTABLE if name in index and index[name].mode == _EXECUTABLE
                        else pygit2.enums.FileMode.BLOB)
                index.add(pygit2.IndexEntry(name, self._objects.create_blob(_encode(text)), mode))
            return str(index.write_tree(self._objects))

    def _entries(self, sha: str) -> dict[bytes, tuple[bytes, bytes]]:
        """Every entry of a commit's tree, subtrees flattened: path -> (mode, object)."""
        listing = self._git("ls-tree", "-r", "-z", "--full-tree", f"{sha}^{{tree}}").stdout
        entries = {}
        for record in filter(None, listing.split(b"\0")):
            meta, _, path = record.partition(b"\t")
            mode, _, oid = meta.split(b" ")
            entries[path] = (mode, oid)
        return entries

    def _commit_tree(self, tree: str, parents: list[str], message: str) -> str:
        # Never signed (a user's commit.gpgSign is not read), and no hook runs.
        signature = pygit2.Signature(*_SIGNATURE)
        with self._libgit2(f"committing {message.splitlines()[0] if message else ''!r}"):
            return str(self._objects.create_commit(
                None, signature, signature, _encode(message.rstrip() + "\n"),
                self._objects.revparse_single(tree).peel(pygit2.Tree).id,
                [self._objects.revparse_single(parent).peel(pygit2.Commit).id
                 for parent in parents]))

    @contextlib.contextmanager
    def _libgit2(self, what: str) -> Iterator[None]:
        """libgit2's errors as this module's: a GitError naming the work. (A failed write, a full
        disk's, comes from pygit2 as an OSError and stays one.)"""
        try:
            yield
        except (pygit2.GitError, KeyError, ValueError) as error:
            raise GitError(f"{what} in {self.path} failed: {error}") from error

    def _git(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
             ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
        return _git(["--git-dir", str(self.path), *args], cwd=self.path, input=input, env=env,
                    ok=ok)


def _git(args: list[str], *, cwd: Path, input: bytes | None = None,
         env: dict[str, str] | None = None,
         ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[bytes]:
    """Run git; an exit status outside `ok` raises GitError."""
    command = ["git", *args]
    # LC_ALL=C keeps git's messages in English, the language of the errors this module raises.
    full_env = {name: value for name, value in os.environ.items()
                if name not in _REPOSITORY_VARIABLES}
    full_env.update(IDENTITY, LC_ALL="C", **(env or {}))
    try:
        done = subprocess.run(command, cwd=cwd, env=full_env, input=input, capture_output=True,
                              stdin=subprocess.DEVNULL if input is None else None, check=False)
    except FileNotFoundError as error:
        raise GitError(f"`{shlex.join(command)}` could not run: {error}") from error
    if done.returncode not in ok:
        stderr = done.stderr.decode(errors="replace").strip() or "(git printed nothing)"
        raise GitError(f"`{shlex.join(command)}` failed with status {done.returncode}: {stderr}")
    return done


def _task_head(folder: Path) -> tuple[Path, str] | None:
    """The top of the git work tree that holds `folder`, and its HEAD commit; None when `folder`
    is in no git repository or that repository has no commit yet."""
    top = _git(["rev-parse", "--show-toplevel"], cwd=folder, ok=(0, 128))
    if top.returncode != 0:
        if b"not a git repository" in top.stderr:
            return None
        # Anything else (a bare repository, one git distrusts) must not silently lose history.
        raise GitError(f"cannot read the history of {folder}: {top.stderr.decode().strip()}")
    head = _git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=folder, ok=(0, 1))
    if head.returncode != 0:
        return None
    return Path(top.stdout.decode().strip()), head.stdout.decode().strip()


def _checked_path(name: str) -> bytes:
    """`name` as git stores it, refused unless it is a plain relative path: git would silently
    drop it from the index otherwise."""
    parts = name.split("/")
    if "\0" in name or any(part in ("", ".", "..") or part.lower() == ".git" for part in parts):
        raise ValueError(f"{name!r} is not a relative path inside the task")
    return _encode(name)


def _encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")
