"""Stop a search any way at all, resume it, and nothing completed is lost or run twice."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agents import make_agents
from agents.offline import OfflineAgent
from autoresearch.cli import main
from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.experiment.records import Status
from engine.experiment.task import load_task, template_path
from engine.rundir.layout import RunDirUnwritable
from engine.rundir.stopped import resumed_options, stopped_run
from engine.rundir.store import read_rows
from tests.conftest import ScriptedAgent

pytestmark = pytest.mark.usefixtures("ray_local")
REPO_ROOT = Path(__file__).resolve().parent.parent


def completed(run_dir: Path) -> list[dict]:
    """The rows of experiments that trained to the end, read from disk as a new reader would."""
    return [row for row in read_rows(run_dir / "results") if Status(row["status"]).trained]


def resumed(run_dir: Path, agents=None, **overrides) -> Search:
    task, info = stopped_run(run_dir)
    options = resumed_options(info, **overrides)
    return Search.resume(task, run_dir, options,
                         agents or make_agents("offline", options.agents, options.seed),
                         run=null_experiment)


def verify(run_dir: Path) -> list[str]:
    task, info = stopped_run(run_dir)
    return Search.resume(task, run_dir, resumed_options(info), [], write=False).problems


def new_search(run_dir: Path, agents=None, **options) -> Search:
    chosen = SearchOptions(**{"agents": 2, "budget_s": 0.3, "seed": 3, **options})
    return Search(load_task(template_path()), run_dir, chosen,
                  agents or make_agents("offline", chosen.agents, chosen.seed),
                  run=null_experiment)


def test_a_stopped_search_resumes_the_same_population_and_repeats_no_completed_experiment(
        tmp_path):
    run_dir = tmp_path / "run"
    first = new_search(run_dir, max_experiments=14)

    def stop_after_six():
        if first.state.finished >= 6 and first.pool.running:
            raise KeyboardInterrupt

    first.run(on_tick=stop_after_six)
    # Experiments cut short on their GPUs; a proposal that came back after the stop is an
    # interrupted row too, with its cost and no commit: there is nothing of it to run again.
    interrupted = {r["exp_id"] for r in first.store.rows()
                   if r["status"] == "interrupted" and r["commit"]}
    assert interrupted, "nothing was in flight at the stop"

    second = resumed(run_dir)
    assert second.problems == []
    assert second.population.to_dict() == first.population.to_dict()
    # Its agents are shown what they were shown before the stop: the newest attempts of each
    # island in full, their changes (diffs of the editable files) included.
    for before, after in zip(first.population.islands, second.population.islands, strict=True):
        newest = list(before.history)[-5:]
        assert list(after.history)[-5:] == newest
        assert all(attempt.diff.startswith("--- a/train.py") for attempt in newest
                   if attempt.status == "ok")
    assert {e.exp_id for e in second.core.queue} >= interrupted
    second.run()

    rows = completed(run_dir)
    ids = [row["exp_id"] for row in rows]
    assert len(ids) == 14 and len(set(ids)) == 14
    assert interrupted <= set(ids), "an interrupted experiment was not run again"
    assert verify(run_dir) == []


def test_a_driver_killed_at_random_moments_loses_and_repeats_nothing(tmp_path, ray_local):
    run_dir, address = tmp_path / "run", ray_local.get_runtime_context().gcs_address
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    script = [sys.executable, str(REPO_ROOT / "tests" / "driver_process.py"), str(run_dir),
              address]

    def start(mode: str) -> subprocess.Popen:
        return subprocess.Popen([*script, mode], env=environment, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    driver = start("new")
    while not (run_dir / "results").is_dir() or len(list((run_dir / "results").iterdir())) < 2:
        assert driver.poll() is None, "the first driver ended before any result"
        time.sleep(0.2)
    counts, kills = [], random.Random(11)
    for _ in range(6):
        time.sleep(kills.uniform(0.3, 3.0))
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        ids = [row["exp_id"] for row in completed(run_dir)]
        assert len(ids) == len(set(ids)), "an experiment completed twice"
        counts.append(len(ids))
        driver = start("resume")
    assert driver.wait(timeout=240) == 0
    assert counts == sorted(counts), f"completed experiments went down: {counts}"
    ids = [row["exp_id"] for row in completed(run_dir)]
    assert len(ids) == 36 and len(set(ids)) == 36
    assert verify(run_dir) == []
    assert start("resume").wait(timeout=120) == 3  # finished: nothing left to resume


def test_after_a_resume_a_repeated_change_is_still_refused_naming_the_experiment(tmp_path):
    run_dir = tmp_path / "run"
    train = load_task(template_path()).files["train.py"]
    far = train.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 3e-1")
    options = SearchOptions(agents=1, budget_s=0.3, seed=3, noise_seeds=2, max_experiments=3)
    first = Search(load_task(template_path()), run_dir, options,
                   [ScriptedAgent([{"train.py": far}])], run=null_experiment)
    first.run()
    [tried] = [r for r in first.store.rows() if r["description"] == "scripted edit 1"]
    assert tried["status"] == "ok"
    respelled = train.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 0.3  # much bolder")
    second = resumed(run_dir, agents=[ScriptedAgent([{"train.py": respelled}])],
                     max_experiments=4)
    second.run()
    [repeat] = [r for r in second.store.rows() if r["description"] == "scripted edit 1"
                and r["exp_id"] != tried["exp_id"]]
    assert repeat["status"] == "rejected"
    assert repeat["message"] == (f"refused: it repeats {tried['exp_id']}: the same change to "
                                 f"the same parent, once comments, formatting and number "
                                 f"spelling are set aside")


def test_a_killed_worker_costs_only_a_retry_of_its_experiment(tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()

    def recording_its_worker(files, spec, seed, budget_s=None, **kwargs):
        (pids / str(os.getpid())).touch()
        return null_experiment(files, spec, seed, budget_s, **kwargs)

    search = Search(load_task(template_path()), tmp_path / "run",
                    SearchOptions(agents=2, budget_s=1.0, max_experiments=8, seed=3),
                    make_agents("offline", 2, 3), run=recording_its_worker)
    killed = []

    def kill_one_worker():
        if not killed and search.state.finished >= 2 and search.pool.running:
            time.sleep(0.2)
            for pid in sorted(pids.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
                try:
                    os.kill(int(pid.name), signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid.name)
                return

    search.run(on_tick=kill_one_worker)
    assert killed
    rows = completed(search.run_dir)
    assert len(rows) == 8
    assert [row["status"] for row in rows].count("ok") >= 7


class OutageThenOffline:
    """An agent whose provider is down for the first `outage_s` seconds."""

    name = "flaky"

    def __init__(self, outage_s: float, seed: int) -> None:
        self.until, self.agent = time.time() + outage_s, OfflineAgent(seed)

    def propose(self, context):
        if time.time() < self.until:
            raise ConnectionError("the provider answered 503 Service Unavailable")
        return self.agent.propose(context)


def test_an_llm_outage_backs_off_and_the_search_goes_on(tmp_path):
    agents = [OutageThenOffline(2.5, seed) for seed in range(2)]
    search = new_search(tmp_path / "run", agents=agents, max_experiments=9)
    search.run()
    rows = search.store.rows()
    failures = [r for r in rows if "503 Service Unavailable" in r["message"]]
    assert failures and all(r["status"] == "rejected" for r in failures)
    assert len(failures) <= 8, "the agents were asked again without backing off"
    mutations = [r for r in completed(search.run_dir) if r["kind"] == "mutation"]
    assert len(completed(search.run_dir)) == 9 and mutations


def test_a_full_disk_stops_the_search_with_a_clear_message_and_corrupts_nothing(
        tmp_path, monkeypatch):
    search = new_search(tmp_path / "run", max_experiments=12)
    append = search.store.append

    def append_until_the_disk_fills(row):
        if len(search.store) >= 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(row)

    monkeypatch.setattr(search.store, "append", append_until_the_disk_fills)
    with pytest.raises(RunDirUnwritable, match=r"No space left on device.*autoresearch resume"):
        search.run()
    assert len(completed(search.run_dir)) == 5
    json.loads((search.run_dir / "population.json").read_text())

    again = resumed(search.run_dir)  # room was made
    again.run()
    ids = [row["exp_id"] for row in completed(search.run_dir)]
    assert len(ids) == 12 and len(set(ids)) == 12


def test_resuming_a_finished_or_broken_run_dir_says_so_in_one_sentence(tmp_path):
    run_dir = tmp_path / "run"
    new_search(run_dir, max_experiments=4).run()
    finished = CliRunner().invoke(main, ["resume", str(run_dir)])
    assert finished.exit_code == 2
    assert finished.output.strip() == (
        f"Error: {run_dir} is finished: it has run 4 experiments (--max-experiments 4); "
        "pass a larger --max-experiments to go on")

    empty = tmp_path / "empty"
    empty.mkdir()
    broken = CliRunner().invoke(main, ["resume", str(empty)])
    assert broken.exit_code == 2
    assert broken.output.strip() == (
        f"Error: cannot resume {empty}: {empty} holds no run to resume (no run.json)")

    (run_dir / "run.json").write_text("{ half a file")
    damaged = CliRunner().invoke(main, ["resume", str(run_dir)])
    assert damaged.exit_code == 2 and "run.json is damaged" in damaged.output


def test_status_verify_finds_a_branch_out_of_step_and_resume_repairs_it(tmp_path):
    run_dir = tmp_path / "run"
    search = new_search(run_dir, max_experiments=6)
    search.run()
    assert CliRunner().invoke(main, ["status", "--verify", str(run_dir)]).exit_code == 0
    island = f"autoresearch/{search.run_name}/island-1"
    head = search.population.islands[1].head.commit
    journaled = search.run_dir.journal().entries()
    search.repo.set_branch(island, next(entry["commit"] for entry in journaled
                                        if entry["commit"] != head))

    checked = CliRunner().invoke(main, ["status", "--verify", str(run_dir)])
    assert checked.exit_code == 1
    assert f"inconsistent: branch {island}" in checked.output

    repaired = resumed(run_dir, max_experiments=8)
    assert any(island in problem for problem in repaired.problems)
    assert verify(run_dir) == []
