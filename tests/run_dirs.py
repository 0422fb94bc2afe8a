"""Run dirs for the tests of the commands that read them: rows written by hand (exact numbers, no
search), and a quick search of the bundled task on the null experiment with a known story."""

from __future__ import annotations

from pathlib import Path

from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.experiment.task import load_task, template_path
from engine.search.pool import InProcessPool
from engine.views.rundata import RunData
from tests.conftest import ScriptedAgent

T0 = 1_800_000_000.0  # when the hand-written runs started


def row(n: int, **fields) -> dict:
    """Experiment number `n` of a hand-written run, trained from T0 + n for one second;
    `fields` override any column."""
    return {
        "exp_id": f"e{n:05d}", "run": "run", "kind": "mutation", "island": 0, "agent": "a",
        "commit": f"c{n}", "parent": "c0", "description": f"change {n}", "status": "ok",
        "objective": 3.0, "seed": 0, "budget_s": 1.0, "queued_at": T0 + n - 0.5,
        "started_at": T0 + n, "finished_at": T0 + n + 1, "cost_usd": 0.0, "tokens": 0,
        "message": "", "data_fingerprint": "", **fields,
    }


def story() -> list[dict]:
    """Two noise runs, a winner, a loser, a refused proposal, a crash, a second winner, and one
    the search stopped."""
    return [
        row(1, kind="baseline", island=None, parent=""),
        row(2, kind="baseline", island=None, parent=""),
        row(3, objective=2.5, cost_usd=0.25),
        row(4, island=1, objective=3.2, cost_usd=0.25),
        row(5, island=1, status="rejected", commit="", objective=None, started_at=None,
            finished_at=None, cost_usd=0.5),
        row(6, status="crash", objective=None),
        row(7, island=1, objective=2.4, parent="c3"),
        row(8, status="interrupted", objective=None, started_at=None, finished_at=None),
    ]


def hand_written(rows: list[dict], *, kept: tuple[str, ...] = (), promoted: tuple[str, ...] = (),
                 islands: tuple[dict, ...] = (), sigma: float | None = 0.01,
                 direction: str = "minimize", tracked: tuple[str, ...] = (),
                 path: Path = Path("no-such-run")) -> RunData:
    """A run dir as `load_run` would read it, from rows and population facts given here;
    `tracked` are the metrics its goal file tracks."""
    info = {"run": "run", "task": "task", "created": T0,
            "objective": {"metric": "val_bpb", "direction": direction, "text": "Minimise it."},
            "options": {"grace_s": None}, "budget_s": 1.0}
    population = {
        "noise": {"sigma": sigma, "runs": []}, "kept": sorted(kept),
        "promotions": [{"exp_id": e, "commit": f"c{int(e[1:])}", "runs": [1.0], "children": 0}
                       for e in promoted],
        "baseline": {"exp_id": "", "commit": "c0", "runs": [3.0], "children": 0},
        "islands": [{"head": head, "stale": 0, "archive": []} for head in islands],
    }
    return RunData(path, info, population, rows, tracked)


def better_learning_rate(files: dict[str, str]) -> dict[str, str]:
    """train.py with the learning rate the null experiment's landscape likes best: a change
    far beyond the noise."""
    train = files["train.py"].replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 0.01")
    assert train != files["train.py"]
    return {"train.py": train}


def null_search(run_dir: Path) -> Search:
    """A finished search of the bundled task on the null experiment, 2 islands, 28 experiments:
    island 0 first makes a winning change (confirmed, then promoted), then proposes an edit of
    the harness (refused); every other proposal is a harmless variant (some of which look better
    on one run and are confirmed too, and not promoted).

    Its 4 GPUs are threads of this process: a Ray worker slow to start could hold a noise run
    back while the other GPUs spend the 28 experiments on variants nobody can judge yet, and
    the story would end before its winner is confirmed."""
    task = load_task(template_path())
    agents = [ScriptedAgent([better_learning_rate(task.files),
                             {"prepare.py": "print('a better harness')\n"}]),
              ScriptedAgent([])]
    options = SearchOptions(agents=2, budget_s=0.05, max_experiments=28, noise_seeds=3, seed=0,
                            tune_trials=0)
    search = Search(task, run_dir, options, agents, run=null_experiment,
                    pool=lambda: InProcessPool(4))
    search.run()
    return search
