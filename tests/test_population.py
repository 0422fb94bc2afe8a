"""Selection: what the population keeps, confirms, promotes and reseeds."""

import pytest

from agents.base import Attempt
from engine.population import Member, Population
from engine.spec import Objective

MINIMISE = Objective("val_bpb", "minimize", "Minimize val_bpb")


def population(noise=(3.00, 3.02, 2.98), islands=2, **options) -> Population:
    """Baseline measured on three seeds: mean 3.00, sigma 0.02."""
    made = Population(MINIMISE, Member("start", {"train.py": "x = 1"}, []), islands, **options)
    for run in noise:
        made.observe_baseline_run(run)
    return made


def child(commit: str, *runs: float) -> Member:
    return Member(commit, {"train.py": commit}, list(runs), exp_id=commit)


def observe(made: Population, island: int, member: Member, seed_only=False):
    parent = made.islands[island].head
    attempt = Attempt(member.commit, "ok" if member.runs else "crash",
                      member.objective if member.runs else None, parent.objective)
    return [d.kind for d in made.observe_child(island, parent, member, attempt,
                                               seed_only=seed_only)]


def test_the_noise_is_the_spread_of_the_baseline_seeds():
    made = population()
    assert made.sigma == pytest.approx(0.02)
    assert made.baseline.objective == pytest.approx(3.00)
    assert made.islands[0].head.objective == pytest.approx(3.00)


def test_a_child_worse_than_its_parent_is_discarded():
    made = population()
    assert observe(made, 0, child("worse", 3.10)) == ["discard"]
    assert made.islands[0].head.commit == "start"
    assert made.kept == set()


def test_a_child_without_a_score_is_discarded():
    made = population()
    assert observe(made, 0, child("crashed")) == ["discard"]


def test_a_child_that_beats_its_parent_within_the_noise_is_kept_and_confirmed():
    made = population()
    assert observe(made, 0, child("slightly", 2.97)) == ["keep", "advance", "confirm"]
    assert made.islands[0].head.commit == "slightly"
    assert made.baseline.commit == "start"
    assert made.kept == {"slightly"}


def test_a_child_far_beyond_the_noise_is_promoted_at_once():
    made = population()
    assert observe(made, 1, child("much", 2.50)) == ["keep", "advance", "promote"]
    assert made.baseline.commit == "much"
    assert made.promotions[-1].commit == "much"


def test_a_seed_only_change_is_confirmed_however_large_its_gain():
    made = population()
    assert observe(made, 0, child("lucky", 2.50), seed_only=True)[-1] == "confirm"
    assert made.baseline.commit == "start"


def test_confirmation_promotes_on_the_mean_of_all_runs():
    made = population()
    assert observe(made, 0, child("real", 2.96))[-1] == "confirm"
    assert made.observe_confirmation("real", 2.94) == []
    decisions = made.observe_confirmation("real", 2.95)
    assert [d.kind for d in decisions] == ["promote"]
    assert made.baseline.objective == pytest.approx(2.95)


def test_confirmation_refuses_a_candidate_whose_mean_falls_back_into_the_noise():
    made = population()
    observe(made, 0, child("fluke", 2.96))
    made.observe_confirmation("fluke", 3.01)
    decisions = made.observe_confirmation("fluke", 3.02)
    assert [d.kind for d in decisions] == ["reject_promotion"]
    assert made.baseline.commit == "start"


def test_a_candidate_that_ignores_its_seed_is_never_promoted():
    made = population()
    observe(made, 0, child("fixed-seed", 2.90), seed_only=True)
    made.observe_confirmation("fixed-seed", 2.90)
    decisions = made.observe_confirmation("fixed-seed", 2.90)
    assert decisions[0].kind == "reject_promotion"
    assert "ignores its seed" in decisions[0].reason


def test_an_island_lagging_the_baseline_is_reseeded_from_it():
    made = population(reseed_after=3)
    observe(made, 1, child("winner", 2.50))  # island 1 promotes; island 0 now lags
    kinds = []
    for k in range(3):
        kinds += observe(made, 0, child(f"dud{k}", 3.5))
    assert kinds[-1] == "reseed"
    assert made.islands[0].head.commit == "winner"
    assert made.islands[0].stale == 0


def test_maximising_objectives_promote_higher_scores():
    maximise = Objective("accuracy", "maximize", "Maximize `accuracy`")
    made = Population(maximise, Member("start", {}, []), 1)
    for run in (0.80, 0.81, 0.79):
        made.observe_baseline_run(run)
    parent = made.islands[0].head
    decisions = made.observe_child(0, parent, child("better", 0.90),
                                   Attempt("better", "ok", 0.90, 0.80), seed_only=False)
    assert [d.kind for d in decisions] == ["keep", "advance", "promote"]


def test_parents_are_mostly_the_head_and_sometimes_other_archive_members():
    made = population(islands=1, explore=0.3, seed=7)
    observe(made, 0, child("first", 2.99))
    observe(made, 0, child("second", 2.985))
    parents = [made.choose_parent(0).commit for _ in range(400)]
    assert parents.count("second") > parents.count("first") > 50


def test_busy_parents_are_chosen_less_often():
    made = population(islands=1, explore=1.0, seed=3)
    observe(made, 0, child("a", 2.99))
    observe(made, 0, child("b", 2.985))  # head is now b; archive holds a and b
    made.islands[0].head = child("c", 2.98)
    busy, idle = made.islands[0].archive
    busy.children = 20
    parents = [made.choose_parent(0).commit for _ in range(400)]
    assert parents.count(idle.commit) > 3 * parents.count(busy.commit)
