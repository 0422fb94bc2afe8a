"""The run's git follows the population: each island's branch at its head, the baseline branch
at the last promotion (a merge commit per promotion), and every result a note on its commit.

The driver calls this after each decision; on resume, `reconcile` compares the branches and
notes with the population replayed from the results, and repairs them (or only lists what
disagrees, for `status --verify`).
"""

from __future__ import annotations

from engine.experiment.records import Result
from engine.rundir.repo import RunRepo, branch_name
from engine.search.members import Member
from engine.search.population import Population


class Branches:
    """The branches and notes of one run's repository."""

    def __init__(self, repo: RunRepo, run: str, metric: str) -> None:
        self.repo, self.run, self.metric = repo, run, metric
        self._merged: dict[str, str] | None = None  # winner -> its promotion, when replaying

    def start(self, islands: int, commit: str) -> None:
        """Every branch at the starting code."""
        for island in [None, *range(islands)]:
            self.repo.set_branch(branch_name(self.run, island), commit)

    def move_island(self, island: int, commit: str) -> None:
        self.repo.set_branch(branch_name(self.run, island), commit)

    def note(self, result: Result) -> None:
        """Attach a result to its experiment's commit."""
        if result.commit:
            self.repo.add_note(result.commit, result_note(result, self.metric))

    def promote(self, member: Member, reason: str) -> str:
        """Merge `member` onto the baseline branch and return the merge commit."""
        baseline = branch_name(self.run, None)
        merged = self.repo.merge_commit(
            member.commit, [self.repo.branch(baseline), member.commit],
            f"promote {member.exp_id}: {self.metric} {member.objective:.6f} ({reason})")
        self.repo.set_branch(baseline, merged)
        return merged

    def promotion_made(self, member: Member) -> str | None:
        """The merge commit an earlier run of the driver made for `member`, if it got that far."""
        if self._merged is None:
            self._merged = self.repo.merges_on(branch_name(self.run, None))
        return self._merged.get(member.commit)

    def reconcile(self, population: Population, results: list[Result], *,
                  write: bool) -> list[str]:
        """What disagrees with the results (replayed into `population`): a branch elsewhere than
        its member, a result without its note. Repaired when `write`."""
        problems = []
        expected = {branch_name(self.run, None): population.baseline.commit}
        for island in population.islands:
            expected[branch_name(self.run, island.index)] = island.head.commit
        actual = self.repo.branches()
        for name, commit in expected.items():
            if actual.get(name) != commit:
                problems.append(f"branch {name} is at {(actual.get(name) or 'nothing')[:12]}, "
                                f"the results put it at {commit[:12]}")
                if write:
                    self.repo.set_branch(name, commit)
        noted = self.repo.noted()
        for result in results:
            if result.commit and result.status.trained and result.commit not in noted:
                problems.append(f"{result.exp_id}'s commit has no note of its result")
                if write:
                    self.note(result)
                    noted.add(result.commit)
        return problems


def result_note(result: Result, metric: str) -> str:
    """The git note that gives an experiment's commit its result, once known."""
    value = result.objective
    score = f"{metric} {value:.6f}" if value is not None else "no score"
    return f"{result.exp_id}: {result.status}, {score}" + (
        f" ({result.message})" if result.message else "")
