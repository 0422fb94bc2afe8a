"""The evolution core on its own: ask and tell, without Ray, git, threads or files."""

import ast
import importlib.util
from pathlib import Path

import pytest

from agents.llm import ProposalFailed
from engine.experiment.objective import Objective
from engine.experiment.records import (
    Experiment,
    ExperimentResult,
    Kind,
    Outcome,
    Result,
    Status,
    metric_columns,
)
from engine.experiment.task import load_task, template_path
from engine.protocol import Measured, Proposal
from engine.rundir.store import ResultStore
from engine.search.evolution import Evolution
from engine.search.members import Member
from engine.search.options import SearchOptions
from engine.search.tuning_gate import TuningGate

CORE = ("engine.search.evolution", "engine.search.population", "engine.search.members",
        "engine.search.briefing", "engine.search.bandit", "engine.search.noise",
        "engine.search.compare", "engine.search.combine", "engine.search.tuning_gate",
        "engine.search.seen_code")
# Nowhere in what the core imports, however indirectly.
NEVER = ("ray", "subprocess", "threading", "concurrent", "multiprocessing", "socket", "pyarrow",
         "engine.rundir", "engine.search.ray_pool", "engine.search.pool", "engine.tuning",
         "engine.driver", "agents", "litellm", "optuna")
# The one lock the core takes: Python's parser is not safe in two threads at once (the module says
# why), and the core parses candidates while agents' threads parse knobs. It starts no thread.
PARSER = "engine.experiment.syntax"
# Not in the core's own modules either: it touches no file.
NOT_IN_CORE = ("os", "io", "pathlib", "shutil", "tempfile")


def imports_of(module: str) -> set[str]:
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def closure(modules: tuple[str, ...]) -> set[str]:
    """Every module the given ones import, following this project's own modules."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module.split(".")[0] in ("engine", "agents") and module != PARSER:
            todo += sorted(imports_of(module))
    return seen


def forbidden(names: set[str], banned: tuple[str, ...]) -> set[str]:
    return {n for n in names if any(n == b or n.startswith(b + ".") for b in banned)}


def test_the_core_imports_no_ray_git_threads_or_file_io():
    assert forbidden(closure(CORE), NEVER) == set()
    assert imports_of(PARSER) - {"__future__"} == {"ast", "threading"}
    assert "Thread(" not in Path(importlib.util.find_spec(PARSER).origin).read_text()
    own = set().union(*(imports_of(module) for module in CORE))
    assert forbidden(own, NOT_IN_CORE) == set()
    for module in CORE:
        assert "open(" not in Path(importlib.util.find_spec(module).origin).read_text()


@pytest.fixture
def core():
    return new_core()


def new_core():
    task = load_task(template_path())
    options = SearchOptions(agents=2, noise_seeds=3, confirm_seeds=2, tune_trials=0)
    merges = []

    def merge(member, reason):
        merges.append(member.exp_id)
        return f"merge-of-{member.commit}"

    def commit(experiment, parent_files):
        experiment.commit = f"c-{experiment.exp_id}"

    evolution = Evolution(task.spec, Member("start", dict(task.files), []), options, "run", merge,
                          commit)
    evolution.merges = merges
    return evolution


def result_of(core, experiment, score, status=Status.OK):
    trained = ExperimentResult(status, score if status is Status.OK else None)
    return Result.of(experiment, Outcome(trained, 0.0, 1.0), run="run", budget_s=1.0)


def proposal(core, island, parent, value):
    train = parent.files["train.py"] + f"\nVARIANT = {value}\n"
    experiment, refusal = core.admit(island, parent, Proposal(f"v{value}", {"train.py": train}),
                                     "scripted")
    assert refusal is None
    experiment.commit = f"c{value}"
    core.enqueue(experiment)
    return experiment


def ask_all(core):
    handed = []
    while (experiment := core.ask(lambda accelerator: True)) is not None:
        handed.append(experiment)
    return handed


def measure_the_noise(core):
    """Run and tell the starting code's three noise runs: the core judges from then on."""
    noise = core.noise_runs()
    ask_all(core)
    for experiment, score in zip(noise, (2.0, 2.1, 1.9), strict=True):
        core.tell(result_of(core, experiment, score))


def test_the_noise_runs_come_first_and_nothing_is_judged_before_the_noise_is_known(core):
    noise = core.noise_runs()
    assert [e.kind for e in noise] == [Kind.BASELINE] * 3
    child = proposal(core, 0, core.parent(0), 1)
    assert ask_all(core) == [*noise, child]
    told = core.tell(result_of(core, child, 0.5))  # far better than the start, but too early
    assert told.decisions == [] and list(core.population.islands[0].history) == []
    for experiment, score in zip(noise[:2], (2.0, 2.1), strict=True):
        assert core.tell(result_of(core, experiment, score)).decisions == []
    told = core.tell(result_of(core, noise[2], 1.9))  # the noise is known: the child is judged
    assert {d.kind for d in told.decisions} >= {"keep", "advance", "confirm"}
    assert [e.kind for e in told.queued] == [Kind.CONTROL, Kind.CONFIRM] * 2


def test_a_candidate_confirmed_beyond_the_noise_is_merged_and_becomes_the_baseline(core):
    measure_the_noise(core)
    child = proposal(core, 1, core.parent(1), 2)
    other = proposal(core, 0, core.parent(0), 3)
    assert ask_all(core) == [child, other]
    runs = core.tell(result_of(core, child, 1.0)).queued
    assert [e.confirms for e in runs] == [child.commit] * 4
    core.tell(result_of(core, other, 2.05))
    assert ask_all(core) == runs  # confirmations go first, in order
    for run in runs:
        core.tell(result_of(core, run, 1.0 if run.kind is Kind.CONFIRM else 2.0))
    assert core.merges == [child.exp_id]
    assert core.population.baseline.commit == f"merge-of-{child.commit}"


def test_two_winners_found_at_once_are_combined_committed_and_confirmed_at_once(core):
    measure_the_noise(core)
    start = core.parent(0).files["train.py"]
    edits = [start.replace("N_EMBD = 128", "N_EMBD = 192"),
             start.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 6e-3")]
    winners = []
    for island, train in enumerate(edits):
        experiment, _ = core.admit(island, core.parent(island), Proposal(
            f"edit {island}", {"train.py": train}), "scripted")
        experiment.commit = f"w{island}"
        winners.append(*core.enqueue(experiment))
    ask_all(core)
    for winner in winners:
        core.tell(result_of(core, winner, 1.0), winner)
    for run in ask_all(core):  # the first winner's runs are told first: it is promoted
        told = core.tell(result_of(core, run, 1.0 if run.kind is Kind.CONFIRM else 2.0), run)
    assert core.merges == [winners[0].exp_id]
    # The second beat its own controls: its change on the new baseline is committed by the
    # core's `commit`, queued, and confirmed from the start, not screened first.
    combination, *runs = told.queued
    assert combination.agent == "merge" and combination.commit == f"c-{combination.exp_id}"
    assert "N_EMBD = 192" in combination.files["train.py"]
    assert "LEARNING_RATE = 6e-3" in combination.files["train.py"]
    assert [(e.kind, e.confirms) for e in runs] == [
        (Kind.CONTROL, combination.commit), (Kind.CONFIRM, combination.commit)] * 2
    assert ask_all(core) == runs + [combination]
    # Its own run, far ahead of the baseline, queues no second confirmation of it.
    assert core.tell(result_of(core, combination, 0.5), combination).queued == []
    for run in runs:
        core.tell(result_of(core, run, 0.5 if run.kind is Kind.CONFIRM else 1.0), run)
    assert core.merges == [winners[0].exp_id, combination.exp_id]


SET_ASIDE = "once comments, formatting and number spelling are set aside"


def test_a_repeated_change_is_refused_naming_the_experiment_it_repeats(core):
    parent = core.parent(0)
    train = parent.files["train.py"]
    first, refusal = core.admit(0, parent, Proposal("lower the rate", {"train.py": train.replace(
        "LEARNING_RATE = 3e-3", "LEARNING_RATE = 2e-3")}), "a")
    assert refusal is None
    respelled = train.replace("LEARNING_RATE = 3e-3",
                              "LEARNING_RATE   = 0.002  # a gentler step")
    _, refusal = core.admit(1, parent, Proposal("again", {"train.py": respelled}), "b")
    assert refusal == (f"refused: it repeats {first.exp_id}: the same change to the same "
                       f"parent, {SET_ASIDE}")


def test_the_same_code_reached_from_another_parent_or_the_starting_code_is_refused_too(core):
    start = core.parent(0)
    first = proposal(core, 0, start, 1)
    child = Member(first.commit, first.files, [], first.exp_id)
    both = first.files["train.py"] + "\nOTHER = 1_000\n"
    second, refusal = core.admit(0, child, Proposal("add", {"train.py": both}), "a")
    assert refusal is None
    second.commit = "c-second"
    grandchild = Member(second.commit, second.files, [], second.exp_id)
    other = start.files["train.py"] + "\nVARIANT = 1\nOTHER = 1000\n"
    _, refusal = core.admit(1, start, Proposal("both at once", {"train.py": other}), "b")
    assert refusal == (f"refused: it repeats the code of {second.exp_id}, made from another "
                       f"parent, {SET_ASIDE}")
    undo = Proposal("undo both", {"train.py": start.files["train.py"]})
    _, refusal = core.admit(0, grandchild, undo, "a")
    assert refusal == f"refused: it repeats the starting code, {SET_ASIDE}"


def test_a_numbers_type_is_part_of_the_code_not_its_spelling(core):
    parent = core.parent(0)
    train = parent.files["train.py"]
    _, refusal = core.admit(0, parent, Proposal("steps", {"train.py": train + "\nSTEPS = 1000\n"}),
                            "a")
    assert refusal is None
    _, refusal = core.admit(0, parent, Proposal("steps", {"train.py": train + "\nSTEPS = 1e3\n"}),
                            "a")
    assert refusal is None, "1e3 is a float and 1000 an int: range(1e3) fails"


def test_a_failed_proposal_is_refused_with_the_agents_error_and_what_it_cost(core):
    _, refusal = core.admit(0, core.parent(0), RuntimeError("rate limited"), "a")
    assert refusal == "the agent failed: rate limited"
    failed = ProposalFailed("the model's reply could not be used", cost_usd=0.02, tokens=900)
    experiment, refusal = core.admit(0, core.parent(0), failed, "llm")
    assert refusal == "the agent failed: the model's reply could not be used"
    assert (experiment.cost_usd, experiment.tokens) == (0.02, 900)


def test_a_rejected_result_is_told_to_its_islands_agent(core):
    parent = core.parent(0)
    experiment, refusal = core.admit(0, parent, RuntimeError("no reply"), "a")
    core.tell(Result.of(experiment, None, run="run", budget_s=1.0, status=Status.REJECTED,
                        message=refusal))
    [attempt] = core.population.islands[0].history
    assert attempt.status == "rejected" and attempt.message == "the agent failed: no reply"
    assert core.context(0, parent).history == (attempt,)


# What the runner reports of a training: its metrics and loss curve (engine/experiment/progress.py)
START_RUN = {"steps": 3100.0, "steps_per_s": 10.3, "params": 858_880.0, "peak_memory_gb": 0.8,
             "final_train_loss": 2.5, "loss_spikes": 1.0}
START_CURVE = [(0, 5.5), (620, 3.0), (3099, 2.5)]
BIGGER_RUN = {"steps": 1840.0, "steps_per_s": 6.1, "params": 3_400_000.0, "peak_memory_gb": 1.9,
              "final_train_loss": 2.4, "loss_spikes": 0.0}
BIGGER_CURVE = [(0, 5.6), (368, 2.9), (1839, 2.4)]


def trained(experiment, score, metrics, curve, status=Status.OK):
    """The result of `experiment` whose training measured `metrics` and `curve`."""
    result = ExperimentResult(status, score if status is Status.OK else None,
                              metrics=dict(metrics), loss_curve=list(curve))
    return Result.of(experiment, Outcome(result, 0.0, 1.0), run="run", budget_s=300.0)


def measured_story(core):
    """The starting code's noise runs, then on island 0 a bigger model that trained fewer steps,
    a change that crashed before its first step, and a refused proposal, told as the driver tells
    them; returns the results."""
    noise = core.noise_runs()
    told = [(experiment, trained(experiment, score, {**START_RUN, "steps": 3100.0 + k},
                                 START_CURVE))
            for k, (experiment, score) in enumerate(zip(noise, (2.0, 2.1, 1.9), strict=True))]
    bigger = proposal(core, 0, core.parent(0), 1)
    broken = proposal(core, 0, core.parent(0), 2)
    ask_all(core)
    told += [(bigger, trained(bigger, 1.95, BIGGER_RUN, BIGGER_CURVE)),
             (broken, trained(broken, None, {"steps": 0.0}, [], status=Status.CRASH))]
    refused, refusal = core.admit(0, core.parent(0), RuntimeError("no reply"), "a")
    told.append((refused, Result.of(refused, None, run="run", budget_s=300.0,
                                    status=Status.REJECTED, message=refusal)))
    for experiment, result in told:
        core.tell(result, experiment)
    return [result for _, result in told]


def test_an_experiment_that_trained_carries_what_it_measured_beside_its_parents(core):
    measured_story(core)
    bigger, broken, refused = core.population.islands[0].history
    assert bigger.measured == Measured(
        steps=1840, steps_per_s=6.1, params=3_400_000, peak_memory_gb=1.9, final_train_loss=2.4,
        loss_spikes=0, loss_curve=((0, 5.6), (368, 2.9), (1839, 2.4)))
    # The parent's values are those of its first scored run (here the first noise run).
    assert bigger.parent_measured == Measured(
        steps=3100, steps_per_s=10.3, params=858_880, peak_memory_gb=0.8, final_train_loss=2.5,
        loss_spikes=1, loss_curve=((0, 5.5), (620, 3.0), (3099, 2.5)))
    assert broken.status == "crash" and broken.measured is None
    assert broken.parent_measured == bigger.parent_measured
    assert refused.status == "rejected" and refused.measured is None


def test_a_resumed_search_shows_the_same_measurements_from_the_stored_results(core, tmp_path):
    store = ResultStore(tmp_path, metric_columns(core.spec))
    for result in measured_story(core):
        store.append(result)
    replayed = new_core()
    for result in store.results():
        replayed.tell(result)

    def shown(evolution):
        return [(a.exp_id, a.measured, a.parent_measured)
                for a in evolution.population.islands[0].history]

    assert shown(replayed) == shown(core)
    assert shown(core)[0][1] is not None


def test_a_pinned_confirmation_waits_while_its_gpu_model_is_busy_and_others_pass(core):
    measure_the_noise(core)
    child = proposal(core, 0, core.parent(0), 4)
    ask_all(core)
    for run in core.tell(result_of(core, child, 1.0)).queued:
        run.accelerator = "H100"
    later = proposal(core, 1, core.parent(1), 5)
    assert core.ask(lambda accelerator: accelerator != "H100") is later
    assert core.ask(lambda accelerator: accelerator != "H100") is None
    assert core.ask(lambda accelerator: True).kind is Kind.CONTROL


def tuning_trial(commit, tuned="tuned"):
    return Experiment(f"e-{commit}", Kind.TUNE, 0, commit, tuned, {}, commit, 0, "optuna")


def test_a_tuning_trial_is_judged_when_it_beats_the_rest_one_confirmation_at_a_time():
    gate = TuningGate(Objective("loss", "minimize", "Minimize loss"), SearchOptions())
    member = Member("tuned", {}, [2.0])

    def admits(commit, score):
        return gate.admits(tuning_trial(commit), result_of(None, tuning_trial(commit), score),
                           member)

    assert not admits("tuned", 1.0)  # its files unchanged: the member's own code
    assert not admits("worse", 2.5)  # behind the member it tunes
    assert admits("first", 1.8)
    gate.confirming(tuning_trial("first"))
    assert not admits("behind", 1.9)  # behind an earlier trial of the same tuning
    assert not admits("better", 1.5)  # ahead, but it waits for the confirmation of "first"
    assert not admits("not-best", 1.6)  # and only the best that waited is judged after it
    assert [(e.commit, r.score) for e, r in gate.decided("first")] == [("better", 1.5)]
    assert gate.decided("first") == [] and gate.decided("other") == []
    assert admits("best", 1.4)  # nothing of this tuning is being confirmed now


def test_a_fresh_winner_is_tuned_next_and_the_baseline_every_few_results():
    gate = TuningGate(Objective("loss", "minimize", "Minimize loss"),
                      SearchOptions(tune_trials=4, tune_every=2))
    baseline, winner = Member("start", {}, [2.0]), Member("winner", {}, [1.5], "e00009")
    assert gate.next(baseline, ready=True) is None and gate.tuning is None
    gate.promoted(winner, 1)
    assert gate.next(baseline, ready=True) == (winner, 1) == gate.tuning
    assert gate.next(baseline, ready=True) is None  # taken: tuned once
    gate.counted()
    gate.counted()
    assert gate.next(baseline, ready=False) is None  # the baseline has no score yet
    assert gate.next(baseline, ready=True) == (baseline, 1)  # the island it came from
    assert gate.next(baseline, ready=True) is None  # the count starts again
