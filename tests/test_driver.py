"""The driver's own rules, on the real loop over the in-process GPU pool: no Ray here."""

import dataclasses
import errno
import io
import threading
import time

import pytest
import ray
from rich.console import Console

from agents import make_agents
from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.experiment.records import ExperimentResult, Status
from engine.experiment.task import load_task, template_path
from engine.search.pool import InProcessPool
from engine.views.live import LiveView
from tests.conftest import ScriptedAgent, start_local_ray
from tests.run_dirs import better_learning_rate

BUDGET_S = 0.05


def search_of(tmp_path, agents, run=null_experiment, slots=2, **options):
    options = SearchOptions(agents=len(agents), budget_s=BUDGET_S, tune_trials=0, **options)
    return Search(load_task(template_path()), tmp_path / "run", options, agents, run=run,
                  pool=lambda: InProcessPool(slots))


def by_status(search):
    rows = search.store.rows()
    return {status: [r for r in rows if r["status"] == status] for status in Status}


@pytest.fixture
def without_ray():
    """No Ray in this process while the test runs: the search must not start one. The session's
    Ray (tests/conftest.py's ray_local), when an earlier test started it, is started again after:
    later tests hold it."""
    was_running = ray.is_initialized()
    ray.shutdown()
    yield
    if was_running:
        start_local_ray()


def test_a_search_drains_at_max_experiments_without_ray(tmp_path, without_ray):
    search = search_of(tmp_path, [ScriptedAgent([]), ScriptedAgent([])], max_experiments=12)
    state = search.run()
    assert not ray.is_initialized()
    assert search.ended == "--max-experiments 12 ran"
    rows = by_status(search)
    assert len(rows[Status.OK]) == 12  # what had started finished: nothing interrupted
    assert rows[Status.INTERRUPTED] == []
    assert state.finished == 12 and state.by_kind["baseline"] == 3


def test_without_ray_a_winner_is_not_tuned_and_the_search_says_so_once(tmp_path, caplog,
                                                                       without_ray):
    # Knob tuning runs in Ray Tune; over GPUs that are not Ray's it must not start a Ray of its own.
    task = load_task(template_path())
    agents = [ScriptedAgent([better_learning_rate(task.files)]), ScriptedAgent([])]
    options = SearchOptions(agents=2, budget_s=BUDGET_S, max_experiments=24)  # tuning on
    search = Search(task, tmp_path / "run", options, agents, run=null_experiment,
                    pool=lambda: InProcessPool(2))
    search.run()
    assert search.population.promotions, "no winner: nothing would have been tuned"
    assert not ray.is_initialized()
    said = [r.getMessage() for r in caplog.records if "tuning needs Ray" in r.getMessage()]
    assert said == ["not tuning knobs: tuning needs Ray, and this search's GPUs are not Ray's"]
    assert not (tmp_path / "run" / "tune").exists()
    assert {r["kind"] for r in search.store.rows()} <= {"baseline", "mutation", "confirm",
                                                         "control"}


class HeldAgent(ScriptedAgent):
    """Proposes only once `go` is set: a call in flight stays in flight until then."""

    def __init__(self, go: threading.Event) -> None:
        super().__init__([])
        self.go, self.asked = go, 0

    def propose(self, context):
        self.asked += 1
        self.go.wait(timeout=10)
        return super().propose(context)


def test_a_large_search_keeps_an_eighth_of_its_gpus_in_proposals_ready(tmp_path):
    # Experiments started together end together; on a large cluster a wave of them must find
    # the next proposals ready, not wait for the agents' calls.
    go = threading.Event()
    agents = [HeldAgent(go) for _ in range(64)]
    search = search_of(tmp_path, agents, slots=32)
    asked = []

    def count_the_calls_then_stop():
        time.sleep(0.5)  # every call the first turn started is in its agent by now
        asked.append(sum(agent.asked for agent in agents))
        go.set()
        raise KeyboardInterrupt

    search.run(on_tick=count_the_calls_then_stop)
    # 32 GPUs, 3 of them on the noise runs: 29 proposals for the others, and 32 / 8 ready
    assert asked == [29 + 4]


def test_no_result_is_judged_before_the_noise_is_measured(tmp_path):
    def slow_noise(files, spec, seed, budget_s=None, **kwargs):
        if seed < 3:  # the noise runs' seeds: they come last
            time.sleep(1.0)
        return null_experiment(files, spec, seed, BUDGET_S, **kwargs)

    seen = []
    search = search_of(tmp_path, [ScriptedAgent([]), ScriptedAgent([])], run=slow_noise,
                       slots=4, max_experiments=14)

    def look():
        judged = [a for island in search.population.islands for a in island.history
                  if a.status != "rejected"]
        seen.append((search.population.sigma is not None, len(judged)))

    search.run(on_tick=look)
    rows = search.store.rows()
    first_mutation = next(k for k, r in enumerate(rows) if r["kind"] == "mutation")
    last_noise = max(k for k, r in enumerate(rows) if r["kind"] == "baseline")
    assert first_mutation < last_noise  # mutations did finish while the noise was unknown
    assert all(judged == 0 for known, judged in seen if not known)
    assert seen[-1][1] > 0


class FailingAgent:
    name = "failing"

    def propose(self, context):
        raise RuntimeError("the model is down")


def test_an_agent_that_fails_backs_off_and_the_others_go_on(tmp_path):
    search = search_of(tmp_path, [FailingAgent(), ScriptedAgent([])], hours=4 / 3600)
    search.run()
    assert search.ended.startswith("--hours")
    failures = [r for r in by_status(search)[Status.REJECTED] if r["island"] == 0]
    assert all(r["message"] == "the agent failed: the model is down" for r in failures)
    # asked at 0 s, then after 1, 2 and 5 s of rest: at most 3 times in 4 s
    assert 2 <= len(failures) <= 3
    assert len([r for r in by_status(search)[Status.OK] if r["island"] == 1]) >= 3


def test_a_search_whose_agents_have_nothing_new_left_ends_by_itself(slow_start_task, tmp_path):
    # One knob (the learning rate): the offline agents soon run out of changes never proposed.
    options = SearchOptions(agents=2, budget_s=BUDGET_S, tune_trials=0,
                            hours=120 / 3600)  # only so that a failure cannot hang the suite
    search = Search(slow_start_task, tmp_path / "run", options, make_agents("offline", 2, 0),
                    run=null_experiment, pool=lambda: InProcessPool(2))
    search.run()
    assert search.ended == "the agents have nothing new to propose"
    rows = by_status(search)
    assert rows[Status.OK] and rows[Status.INTERRUPTED] == []
    said = [r for r in rows[Status.REJECTED] if r["message"].startswith("the agent has nothing")]
    # said once for each parent it was asked about: an agent with nothing new does not back off
    assert said and len(said) == len({(r["island"], r["parent"]) for r in said})
    assert all("proposed already" in r["message"] for r in said)


class ClosingTerminal(io.StringIO):
    """A terminal closed under a running search, after its first two writes: writing to it
    then gives what a closed terminal gives."""

    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        if self.writes > 2:
            raise OSError(errno.EIO, "Input/output error")
        return super().write(text)


def test_a_live_view_whose_terminal_went_away_does_not_stop_the_search(tmp_path, caplog):
    search = search_of(tmp_path, [ScriptedAgent([]), ScriptedAgent([])], max_experiments=8)
    with LiveView(search, Console(file=ClosingTerminal(), force_terminal=True)) as view:
        search.run(on_tick=view.tick)
    assert search.ended == "--max-experiments 8 ran"
    assert len(by_status(search)[Status.OK]) == 8
    assert "the live view cannot write ([Errno 5] Input/output error)" in caplog.text


def test_the_search_starts_nothing_after_its_hours_and_lets_the_rest_finish(tmp_path):
    options = SearchOptions(agents=2, budget_s=1.5, hours=3 / 3600, tune_trials=0)
    search = Search(load_task(template_path()), tmp_path / "run", options,
                    make_agents("offline", 2, 0), run=null_experiment,
                    pool=lambda: InProcessPool(4))
    search.run()
    assert search.ended.startswith("--hours")
    rows = by_status(search)[Status.OK]
    deadline = search.state.started_at + 3
    assert len(rows) >= 4 and by_status(search)[Status.INTERRUPTED] == []
    assert all(r["started_at"] <= deadline + 0.5 for r in rows)
    assert max(r["finished_at"] for r in rows) > deadline


def test_a_target_reached_ends_the_search_at_once(tmp_path):
    search = search_of(tmp_path, [ScriptedAgent([])], target=100.0)  # any score is below it
    search.run()
    assert search.ended == "target 100.0 reached"
    assert len(by_status(search)[Status.OK]) < 10


class PricedAgent(ScriptedAgent):
    def propose(self, context):
        from dataclasses import replace

        return replace(super().propose(context), cost_usd=1.0)


def test_a_spent_budget_stops_the_proposals_and_lets_the_queue_run(tmp_path):
    search = search_of(tmp_path, [PricedAgent([]), PricedAgent([])], max_cost=3.0)
    search.run()
    assert search.ended == "--max-cost 3.0 spent"
    rows = search.store.rows()
    mutations = [r for r in rows if r["kind"] == "mutation"]
    assert 3 <= len(mutations) <= 4  # the agents in flight when the limit came finish
    assert {r["status"] for r in mutations} == {"ok"}
    assert search.state.spent_usd == len(mutations)


def test_a_starting_code_with_no_score_ends_the_search(tmp_path):
    def broken(files, spec, seed, budget_s=None, **kwargs):
        return ExperimentResult(Status.CRASH, None, message="train.py exited with status 1")

    search = search_of(tmp_path, [ScriptedAgent([])], run=broken)
    search.run()
    assert search.ended == "the starting code has no score"
    assert search.nothing_left() == (
        "its starting code has no score on any noise seed; see results.tsv")


def test_a_resume_runs_again_what_the_stop_interrupted_and_keeps_every_result(tmp_path):
    def slow(files, spec, seed, budget_s=None, **kwargs):
        return null_experiment(files, spec, seed, 0.3, **kwargs)

    first = search_of(tmp_path, [ScriptedAgent([]), ScriptedAgent([])], run=slow,
                      max_experiments=16)

    def interrupt():
        if first.state.finished >= 6 and len(first.pool.running) == 2:
            raise KeyboardInterrupt

    first.run(on_tick=interrupt)
    before = {r["exp_id"]: r for r in first.store.rows()}
    interrupted = {exp_id for exp_id, r in before.items() if r["status"] == "interrupted"}
    assert len(interrupted) == 2

    second = Search.resume(load_task(template_path()), tmp_path / "run", first.options,
                           [ScriptedAgent([]), ScriptedAgent([])], run=slow,
                           pool=lambda: InProcessPool(2))
    assert interrupted <= {e.exp_id for e in second.core.queue}
    assert second.problems == []
    second.run()
    after = {r["exp_id"]: r for r in second.store.rows()}
    assert {after[exp_id]["status"] for exp_id in interrupted} == {"ok"}
    for exp_id, row in before.items():  # nothing that had finished is lost or run again
        if row["status"] == "ok":
            assert after[exp_id]["finished_at"] == pytest.approx(row["finished_at"])
    assert second.ended == "--max-experiments 16 ran"
    assert len([r for r in after.values() if r["status"] == "ok"]) == 16


def test_a_combination_stopped_while_it_was_confirmed_resumes_under_its_own_id_and_commit(
        tmp_path):
    task = load_task(template_path())
    start = task.files["train.py"].replace("N_EMBD = 128", "N_EMBD = 64")
    task = dataclasses.replace(task, files={**task.files, "train.py": start})
    winners = [start.replace("N_EMBD = 64", "N_EMBD = 128"),
               start.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 1e-2")]
    options = SearchOptions(agents=2, budget_s=BUDGET_S, max_experiments=40, noise_seeds=3,
                            confirm_seeds=2, tune_trials=0)

    def agents():
        return [ScriptedAgent([{"train.py": winners[0]}]),
                ScriptedAgent([{"train.py": winners[1]}])]

    first = Search(task, tmp_path / "run", options, agents(), run=null_experiment,
                   pool=lambda: InProcessPool(2))

    def combination_half_confirmed():
        for commit, (runs, controls) in first.population.confirming.items():
            member = first.population.confirmation(commit)[0]
            if first.descriptions[member.exp_id].startswith("combine") and runs + controls < 4:
                return member
        return None

    def stop_there():
        if combination_half_confirmed():
            raise KeyboardInterrupt

    first.run(on_tick=stop_there)
    combination = combination_half_confirmed()
    due = first.population.confirming[combination.commit]

    second = Search.resume(task, tmp_path / "run", options, agents(), run=null_experiment,
                           pool=lambda: InProcessPool(2))
    # The replay made the combination again under the id and commit it had: its confirmation
    # goes on from where it stopped, with the runs journaled for it.
    assert second.problems == []
    assert second.population.confirming[combination.commit] == due
    assert second.population.confirmation(combination.commit)[0].exp_id == combination.exp_id
    journaled = {entry["exp_id"] for entry in second.run_dir.journal().entries()}
    waiting = [e for e in second.core.queue if e.confirms == combination.commit]
    assert len(waiting) == sum(due) and {e.exp_id for e in waiting} <= journaled
    second.run()
    promoted = [member.exp_id for member in second.population.promotions]
    assert promoted[-1] == combination.exp_id
    assert "N_EMBD = 128" in second.population.baseline.files["train.py"]
    assert "LEARNING_RATE = 1e-2" in second.population.baseline.files["train.py"]
    trained = [r["exp_id"] for r in second.store.rows() if Status(r["status"]).trained]
    assert len(trained) == len(set(trained))  # nothing ran twice
    verified = Search.resume(task, tmp_path / "run", options, [], write=False)
    assert verified.problems == []
