"""A run dir read back, as any outside tool could: run.json, population.json, the Parquet results
and the run's git repository, nothing else. It works while the search runs (the results folder
grows, population.json is replaced atomically) and after.

`status`, `report`, `reproduce` and `diff` all start from `load_run`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from engine.experiment.records import Status
from engine.experiment.spec import HOLDOUT_PREFIX, GoalFileError, task_spec
from engine.rundir.layout import RunDir
from engine.rundir.repo import GitError, RunRepo


class NotARunDir(ValueError):
    """The folder holds no run (no run.json)."""


class NoSuchChange(LookupError):
    """The run has no such experiment, or no commit for it to show; the message says which."""


@dataclass
class RunData:
    """One run dir as it is on disk at the moment it was read."""

    path: Path
    info: dict  # run.json
    population: dict  # population.json; {} before the first result
    rows: list[dict]  # every experiment in the order its result arrived; times as epoch seconds
    # The objective's holdout score when the harness reports one, then the goal file's own
    # metrics (its `# Metrics`), each a column of the results: what `status` and the report show
    # beside the objective.
    tracked: tuple[str, ...] = ()
    _owners: dict[str, dict | None] = field(default_factory=dict, repr=False)

    @property
    def metric(self) -> str:
        return self.info["objective"]["metric"]

    @property
    def direction(self) -> str:
        return self.info["objective"]["direction"]

    @cached_property
    def repo(self) -> RunRepo:
        return RunDir(self.path).repo()

    @cached_property
    def by_id(self) -> dict[str, dict]:
        return {row["exp_id"]: row for row in self.rows}

    @property
    def kept(self) -> set[str]:
        """The experiments that beat their parent (population.json's `kept`)."""
        return set(self.population.get("kept", []))

    @property
    def promoted(self) -> list[str]:
        """The exp ids promoted into the baseline, in order."""
        return [member["exp_id"] for member in self.population.get("promotions", [])]

    @property
    def sigma(self) -> float | None:
        """The noise measured on the starting code, once known."""
        return self.population.get("noise", {}).get("sigma")

    @cached_property
    def start_commit(self) -> str | None:
        """The commit of the starting code (the one every baseline noise run trained)."""
        return next((r["commit"] for r in self.rows if r["kind"] == "baseline"), None)

    @property
    def start_objective(self) -> float | None:
        """The starting code's score: the mean of its noise runs."""
        runs = [r["objective"] for r in self.rows if r["kind"] == "baseline" and _scored(r)]
        return statistics.fmean(runs) if runs else None

    def tracked_means(self, member: dict) -> dict[str, float | None]:
        """Each tracked metric of a member of the population (population.json's baseline, an
        island's head, a promotion) as the mean over the scored runs of its code, the runs its
        objective is the mean of: its experiment's, its confirmations' and, for a baseline, its
        controls'. None for a metric no run measured."""
        own = self.by_id.get(member["exp_id"], {}).get("commit")
        return self._means({member["commit"], own} - {None}, self.tracked)

    @property
    def holdout(self) -> str | None:
        """The objective's holdout key, when the harness reports one."""
        return next((name for name in self.tracked if name.startswith(HOLDOUT_PREFIX)), None)

    def holdout_of(self, commits: set[str]) -> float | None:
        """The mean holdout score of the scored runs of `commits` (None without one)."""
        if self.holdout is None:
            return None
        return self._means(commits, (self.holdout,))[self.holdout]

    def _means(self, commits: set[str], names: tuple[str, ...]) -> dict[str, float | None]:
        """Each of `names` as its mean over the scored runs of `commits`."""
        runs = [r for r in self.rows if _scored(r) and r["commit"] in commits]
        return {name: _mean([r.get(name) for r in runs]) for name in names}

    def is_better(self, candidate: float, reference: float) -> bool:
        return candidate < reference if self.direction == "minimize" else candidate > reference

    def committed(self, exp_id: str) -> dict:
        """The row of `exp_id`, an experiment that has a commit; raises NoSuchChange when the
        run has no such experiment, or only a proposal refused before it was committed."""
        if exp_id not in self.by_id:
            raise NoSuchChange(f"{self.path} has no experiment {exp_id}")
        row = self.by_id[exp_id]
        if not row["commit"]:
            reason = row["message"].removeprefix("refused: ")
            raise NoSuchChange(f"{exp_id} was refused before it was committed: {reason}")
        return row

    def change(self, exp_id: str) -> str:
        """The unified diff of an experiment's commit against its parent's (a fresh-seed run of
        a candidate shows the candidate's change). Raises NoSuchChange for an unknown id, a
        refused proposal (never committed) and a run of the starting code (no parent)."""
        row = self.committed(exp_id)
        if row["kind"] == "confirm":
            row = self._owner(row["commit"]) or row
        if row["kind"] == "baseline" or not row["parent"]:
            raise NoSuchChange(f"{exp_id} is a run of the starting code, which changes nothing")
        return self.repo.diff(row["parent"], row["commit"])

    def lineage(self, exp_id: str) -> list[dict]:
        """The chain of changes from the starting code to `exp_id`, oldest first: the starting
        code (exp_id "") and then each experiment with its objective and description."""
        chain, row, seen = [], self.by_id.get(exp_id), set()
        while row is not None and row["kind"] == "mutation" and row["exp_id"] not in seen:
            seen.add(row["exp_id"])
            chain.append(_step(row))
            row = self._owner(row["parent"])
        chain.append({"exp_id": "", "objective": self.start_objective,
                      "description": "the starting code", "commit": self.start_commit or ""})
        for step in chain:
            step["holdout"] = self.holdout_of({step["commit"]})
        return chain[::-1]

    def _owner(self, commit: str) -> dict | None:
        """The mutation row that made `commit`; for a promotion's commit on the baseline branch
        (an island reseeded from the baseline builds on it), the promoted winner's row, when the
        run's repository is there to tell; None for the starting code or a commit the results do
        not know yet."""
        if commit not in self._owners:
            mutation = next((r for r in self.rows if r["commit"] == commit
                             and r["kind"] == "mutation"), None)
            if (mutation is None and commit and commit != self.start_commit
                    and RunDir(self.path).repo_path.exists()):
                # A promotion commit has its winner's tree: the winner is the one it does not
                # differ from (no two experiments share code, the driver refuses repeats).
                mutation = next((self.by_id[exp_id] for exp_id in self.promoted
                                 if exp_id in self.by_id
                                 and not self.repo.diff(commit, self.by_id[exp_id]["commit"])),
                                None)
            self._owners[commit] = mutation
        return self._owners[commit]


def load_run(path: Path | str) -> RunData:
    """Read the run dir at `path`; raises NotARunDir when it has no run.json."""
    run_dir = RunDir(path)
    if not run_dir.holds_run:
        raise NotARunDir(f"{path} is not a run dir (it has no {RunDir.INFO})")
    info = run_dir.read_info()
    return RunData(run_dir.path, info, run_dir.read_checkpoint(), run_dir.read_rows(),
                   _tracked_metrics(run_dir, info))


def _tracked_metrics(run_dir: RunDir, info: dict) -> tuple[str, ...]:
    """The objective's holdout key (when the harness declares one) and the metrics the goal file
    tracks, read as the search read it: the goal file and the
    harness of the run's first commit. A run dir whose repository is damaged is still shown,
    without them."""
    try:
        spec = task_spec(run_dir.repo().files_at(info["start_commit"]))
        return (*([spec.holdout] if spec.holdout else []), *spec.metrics)
    except (GitError, KeyError, GoalFileError):
        return ()


def strategies(run: RunData) -> list[dict]:
    """The agents' changes by strategy and model: proposals, changes kept and promoted, the GPU
    time of their runs and what their calls cost, and kept changes per GPU-hour and per dollar
    (None without GPU time or cost). Best per GPU-hour first."""
    kept, promoted = run.kept, set(run.promoted)
    arms: dict[tuple[str, str], dict] = {}
    for row in run.rows:
        if row["kind"] != "mutation" or row["agent"] == "merge" or row["status"] == "interrupted":
            continue
        strategy, model = row.get("strategy") or "-", row.get("model") or "-"
        arm = arms.setdefault((strategy, model), {
            "strategy": strategy, "model": model,
            "proposals": 0, "kept": 0, "promoted": 0, "gpu_hours": 0.0, "cost_usd": 0.0})
        arm["proposals"] += 1
        arm["kept"] += row["exp_id"] in kept
        arm["promoted"] += row["exp_id"] in promoted
        if row["started_at"] is not None and row["finished_at"] is not None:
            arm["gpu_hours"] += (row["finished_at"] - row["started_at"]) / 3600
        arm["cost_usd"] += row["cost_usd"] or 0.0
    for arm in arms.values():
        arm["kept_per_gpu_hour"] = arm["kept"] / arm["gpu_hours"] if arm["gpu_hours"] else None
        arm["kept_per_usd"] = arm["kept"] / arm["cost_usd"] if arm["cost_usd"] else None
    return sorted(arms.values(), key=lambda arm: -(arm["kept_per_gpu_hour"] or 0))


def trained(rows: list[dict]) -> list[dict]:
    """The rows of experiments that ran to the end (whatever their status)."""
    return [r for r in rows if Status(r["status"]).trained]


def promotion_tree(run: RunData) -> dict:
    """The lineage tree of the promotions: the starting code at the root, each promoted
    experiment under the chain of changes it descends from. A node is a dict with exp_id ("" for
    the starting code), objective, description, promotion (its 1-based place in the order of
    promotions, or None) and children."""
    order = {exp_id: k for k, exp_id in enumerate(run.promoted, start=1)}
    root = {"exp_id": "", "objective": run.start_objective, "description": "the starting code",
            "promotion": None, "children": []}
    nodes = {"": root}
    for exp_id in run.promoted:
        parent = root
        for step in run.lineage(exp_id)[1:]:  # every lineage starts at the starting code
            if step["exp_id"] not in nodes:
                nodes[step["exp_id"]] = {
                    "exp_id": step["exp_id"], "objective": step["objective"],
                    "description": step["description"], "promotion": order.get(step["exp_id"]),
                    "children": []}
                parent["children"].append(nodes[step["exp_id"]])
            parent = nodes[step["exp_id"]]
    return root


def _scored(row: dict) -> bool:
    return row["status"] == "ok" and row["objective"] is not None


def _mean(values: list[float | None]) -> float | None:
    measured = [v for v in values if v is not None]
    return statistics.fmean(measured) if measured else None


def _step(row: dict) -> dict:
    return {"exp_id": row["exp_id"], "objective": row["objective"],
            "description": row["description"], "commit": row["commit"]}
