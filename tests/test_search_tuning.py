"""Knob tuning inside a search: Optuna trials through Ray Tune on the same GPUs as the agents,
each trial a commit and a row, the best confirmed on fresh seeds beside control runs of the
baseline before it is promoted.

(tests/test_tuning.py trains real trials of the bundled task beside mutation experiments; here
null experiments keep the whole search fast.)"""

import dataclasses
import json
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from agents import make_agents
from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.rundir.store import read_rows

pytestmark = pytest.mark.usefixtures("ray_local")


def test_a_tuned_setting_runs_beside_the_agents_is_committed_confirmed_and_promoted(
        slow_start_task, tmp_path):
    source = slow_start_task.files["train.py"].replace(
        "LEARNING_RATE = 1e-4", "LEARNING_RATE = 1e-4  # tune: 1e-4..1e-2 log")
    task = dataclasses.replace(slow_start_task, files={**slow_start_task.files,
                                                       "train.py": source})
    # The offline agents have one knob to move: they may run out of changes never proposed
    # before 80 experiments (the search then ends); the clock is a guard.
    options = SearchOptions(agents=2, budget_s=1.0, max_experiments=80, hours=1.5 / 60, seed=2,
                            tune_trials=6, tune_every=2, tune_share=0.5)
    search = Search(task, tmp_path / "run", options, make_agents("offline", 2, 2),
                    run=null_experiment)
    search.run()
    rows = read_rows(search.run_dir / "results")
    trials = [r for r in rows if r["kind"] == "tune"]
    # the agents' own work: their proposals, and the confirmations those called for
    agents_work = [r for r in rows if r["kind"] in ("mutation", "confirm", "control")
                   and r["started_at"]]
    assert len(trials) >= 5
    assert all("LEARNING_RATE" in json.loads(r["knobs"]) and r["trial"] for r in trials)
    assert any(t["started_at"] < m["finished_at"] and m["started_at"] < t["finished_at"]
               for t in trials for m in agents_work), "no trial ran beside the agents' work"

    kinds = {r["exp_id"]: r["kind"] for r in rows}
    tuned = [m for m in search.population.promotions if kinds.get(m.exp_id) == "tune"]
    assert tuned, "no tuned setting was promoted"
    winner = next(r for r in trials if r["exp_id"] == tuned[0].exp_id)
    assert winner["description"].startswith("tune: LEARNING_RATE ")
    # 3 runs beside 3 control runs; again if another promotion overtook it meanwhile
    confirmation = Counter(r["kind"] for r in rows if r["confirms"] == winner["commit"])
    assert confirmation["confirm"] == confirmation["control"] > 0
    assert confirmation["confirm"] % 3 == 0, "a tuned winner was promoted without confirmation"
    committed = search.repo.files_at(winner["commit"])["train.py"]
    written = re.search(r"^LEARNING_RATE = (\S+)", committed, re.M).group(1)
    assert float(written) == json.loads(winner["knobs"])["LEARNING_RATE"]
    assert winner["exp_id"] in search.repo.note(winner["commit"])


def _tune_host_pids() -> list[int]:
    """The processes Tune runs in: Ray titles an actor's process `ray::<its class>`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::TuneHost"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # it ended meanwhile
            continue
    return pids


def test_a_tuning_whose_process_dies_is_recorded_and_the_next_runs_in_a_fresh_one(
        slow_start_task, tmp_path, caplog):
    source = slow_start_task.files["train.py"].replace(
        "LEARNING_RATE = 1e-4", "LEARNING_RATE = 1e-4  # tune: 1e-4..1e-2 log")
    task = dataclasses.replace(slow_start_task, files={**slow_start_task.files,
                                                       "train.py": source})
    options = SearchOptions(agents=2, budget_s=1.0, hours=3 / 60, seed=2, tune_trials=4,
                            tune_every=2, tune_share=0.5)
    search = Search(task, tmp_path / "run", options, make_agents("offline", 2, 2),
                    run=null_experiment)
    killed: list[str] = []  # the refinement whose host was killed

    def kill_the_first_tuning_then_wait_for_another():
        refinement = search.refiner.refinement
        if refinement is None:
            return
        if not killed and refinement.running_trials:
            for pid in _tune_host_pids():  # as the kernel's out-of-memory killer would
                os.kill(pid, signal.SIGKILL)
            killed.append(refinement.name)
        elif killed and refinement.name != killed[0] and refinement.best() is not None:
            raise KeyboardInterrupt  # a later tuning's trial was scored: enough seen

    search.run(on_tick=kill_the_first_tuning_then_wait_for_another)
    assert killed, "no tuning ran"
    assert search.ended is None, "the search ended on its own, not after a later tuning's trial"
    assert f"tuning {killed[0]} failed: the actor of the Tune run died" in caplog.text
    deadline = time.monotonic() + 30
    while _tune_host_pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _tune_host_pids() == [], "the stop left a Tune host running"
    rows = read_rows(search.run_dir / "results")
    assert any(r["kind"] == "mutation" and r["status"] == "ok" for r in rows)
