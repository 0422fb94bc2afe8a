"""Selection: what the population keeps, confirms, promotes and reseeds."""

import pytest

from engine.experiment.objective import Objective
from engine.protocol import Attempt
from engine.search.members import Member
from engine.search.noise import Noise
from engine.search.population import Population

MINIMISE = Objective("val_bpb", "minimize", "Minimize val_bpb")


def population(noise=(3.00, 3.02, 2.98), islands=2, **options) -> Population:
    """Baseline measured on three seeds: mean 3.00, sigma 0.02 on 2 degrees of freedom."""
    made = Population(MINIMISE, Member("start", {"train.py": "x = 1"}, []), islands, **options)
    for run in noise:
        made.observe_baseline_run(run)
    made.noise_measured()
    return made


def child(commit: str, *runs: float, accelerator: str = "cpu") -> Member:
    return Member(commit, {"train.py": commit}, list(runs), exp_id=commit,
                  accelerators=[accelerator] * len(runs))


def observe(made: Population, island: int, member: Member):
    return made.observe_child(island, made.islands[island].head, member,
                              Attempt(member.commit, "ok", None, None))


def kinds(decisions) -> list[str]:
    return [d.kind for d in decisions]


def confirm(made: Population, commit: str, runs, controls, accelerator="cpu"):
    """Feed a confirmation's runs and control runs, taking turns as the driver queues them."""
    decisions = []
    for mine, theirs in zip(runs, controls, strict=True):
        decisions += made.observe_control(commit, theirs, accelerator)
        decisions += made.observe_confirmation(commit, mine, accelerator)
    return decisions


def first_promoted(made: Population, start: str, score: float) -> None:
    """A winner changing `A = 1` to `A = 5` on island 0, promoted as "merged-first"."""
    made.baseline.files["train.py"] = start
    observe(made, 0, Member("first", {"train.py": start.replace("A = 1", "A = 5")}, [score],
                            "first"))
    confirm(made, "first", [score, score + 0.01, score - 0.01], [3.00, 3.01, 2.99])
    made.rebase_baseline("merged-first")


def test_the_noise_is_the_spread_of_the_baseline_seeds():
    made = population()
    assert made.sigma == pytest.approx(0.02)
    assert made.noise.estimate() == (pytest.approx(0.02), 2)
    assert made.baseline.objective == pytest.approx(3.00)
    assert made.islands[0].head.objective == pytest.approx(3.00)


def test_every_confirmation_adds_its_spread_to_the_noise_estimate():
    made = population()
    observe(made, 0, child("far", 2.90))
    confirm(made, "far", [2.99, 3.01, 3.00], [3.00, 2.98, 3.02])
    sigma, df = made.noise.estimate()
    assert df == 2 + 2 + 2
    assert sigma == pytest.approx(((0.0008 + 0.0002 + 0.0008) / 6) ** 0.5)


def test_the_noise_of_each_accelerator_type_is_its_own_once_measured_enough():
    noise = Noise()
    noise.add_group("A10G", [1.0, 1.1, 0.9])
    noise.add_group("L4", [2.0, 2.4, 1.6, 2.0, 2.0])
    assert noise.estimate("L4")[1] == 4
    assert noise.estimate("L4")[0] == pytest.approx((0.32 / 4) ** 0.5)
    assert noise.estimate("A10G") == noise.estimate()  # 2 df of its own: pooled with the rest
    assert noise.estimate()[1] == 6


def test_a_child_worse_than_its_parent_is_discarded():
    made = population()
    assert kinds(observe(made, 0, child("worse", 3.10))) == ["discard"]
    assert made.islands[0].head.commit == "start"
    assert made.kept == set()


def test_a_child_without_a_score_is_discarded():
    made = population()
    assert kinds(observe(made, 0, child("crashed"))) == ["discard"]


def test_a_child_that_beats_its_parent_within_the_noise_is_kept_without_a_confirmation():
    made = population()
    assert kinds(observe(made, 0, child("slightly", 2.99))) == ["keep", "advance"]
    assert made.islands[0].head.commit == "slightly"
    assert made.baseline.commit == "start"
    assert made.kept == {"slightly"}


def test_one_run_never_promotes_however_far_ahead_it_looks():
    made = population()
    decisions = observe(made, 1, child("much", 2.50, accelerator="H100"))
    assert kinds(decisions) == ["keep", "advance", "confirm"]
    assert decisions[-1].confirm_seeds == 3
    assert decisions[-1].against is made.baseline
    assert decisions[-1].accelerator == "H100"
    assert made.baseline.commit == "start"


def test_a_candidate_that_beats_its_control_runs_beyond_the_noise_is_promoted():
    made = population()
    observe(made, 0, child("real", 2.90))
    decisions = confirm(made, "real", [2.90, 2.92, 2.91], [3.00, 3.01, 2.99])
    assert kinds(decisions) == ["promote"]
    assert made.baseline.commit == "real"
    assert "3 runs against 3 control runs" in decisions[0].reason


def test_the_run_that_selected_a_candidate_never_counts_again():
    made = population()
    observe(made, 0, child("lucky", 2.90))
    decisions = confirm(made, "lucky", [3.00, 2.99, 3.01], [3.00, 3.01, 2.99])
    assert kinds(decisions) == ["reject_promotion"]
    assert made.baseline.commit == "start"
    assert made.member(0, "lucky").runs == [3.00, 2.99, 3.01]  # its lucky 2.90 is gone


def test_drift_cancels_against_control_runs_made_at_the_same_time():
    made = population()
    observe(made, 0, child("drifted", 2.90))
    # Everything got faster since the noise runs: the candidate beats the old baseline mean by
    # 0.2, but not the baseline run beside it.
    decisions = confirm(made, "drifted", [2.80, 2.81, 2.79], [2.80, 2.79, 2.81])
    assert kinds(decisions) == ["reject_promotion"]
    made = population()
    observe(made, 0, child("slower-but-better", 2.90))
    decisions = confirm(made, "slower-but-better", [3.10, 3.11, 3.09], [3.20, 3.21, 3.19])
    assert kinds(decisions) == ["promote"]


def test_few_degrees_of_freedom_widen_the_margin():
    runs, controls = [2.97, 2.98, 2.96], [3.00, 3.01, 2.99]
    scarce = population(noise=(3.00, 3.02))  # sigma on 1 df
    observe(scarce, 0, child("c", 2.90))
    assert kinds(confirm(scarce, "c", runs, controls)) == ["reject_promotion"]
    plenty = population(noise=(3.00, 3.02, 2.98, 3.01, 2.99, 3.00, 3.02, 2.98, 3.01, 2.99))
    observe(plenty, 0, child("c", 2.90))
    assert kinds(confirm(plenty, "c", runs, controls)) == ["promote"]


def test_runs_are_compared_only_within_one_accelerator_type():
    made = population()
    observe(made, 0, child("elsewhere", 2.90))
    decisions = []
    for _ in range(3):
        decisions += made.observe_control("elsewhere", 3.60, "L4")  # a slower GPU model
        decisions += made.observe_confirmation("elsewhere", 2.99, "A10G")
    assert kinds(decisions) == ["reject_promotion"]
    assert "share no accelerator type" in decisions[0].reason


def test_a_candidate_that_ignores_its_seed_is_never_promoted():
    made = population()
    observe(made, 0, child("fixed-seed", 2.90))
    decisions = confirm(made, "fixed-seed", [2.90, 2.90, 2.90], [3.00, 3.01, 2.99])
    assert kinds(decisions) == ["reject_promotion"]
    assert "ignores its seed" in decisions[0].reason


def first_promoted_while_second_is_confirmed() -> Population:
    """Two children confirmed side by side: "first" finished first and was promoted (as
    "merged-first"); the confirmation of "second" is still out."""
    made = population()
    observe(made, 0, child("first", 2.90))
    observe(made, 1, child("second", 2.90))
    confirm(made, "first", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])
    made.rebase_baseline("merged-first")
    return made


def test_a_candidate_whose_baseline_was_replaced_meanwhile_by_a_lesser_winner_replaces_it():
    made = first_promoted_while_second_is_confirmed()
    decisions = confirm(made, "second", [2.80, 2.81, 2.79], [3.00, 3.01, 2.99])
    assert kinds(decisions) == ["promote"]
    assert decisions[0].reason.startswith(
        "the baseline changed while it was confirmed, and its runs beat the new one's: "
        "3 runs against 3 runs of first: ahead by 0.1")
    assert made.baseline.commit == "second"


def test_a_candidate_not_clearly_ahead_of_a_baseline_that_replaced_its_own_is_confirmed_again():
    made = first_promoted_while_second_is_confirmed()
    # ahead of the new baseline's runs by 0.025: beyond the screen, not beyond the test
    decisions = confirm(made, "second", [2.875, 2.885, 2.865], [3.00, 3.01, 2.99])
    assert kinds(decisions) == ["confirm"]
    assert decisions[0].against.commit == "merged-first"
    assert kinds(confirm(made, "second", [2.80, 2.81, 2.79], [2.90, 2.91, 2.89])) == ["promote"]


def test_a_candidate_the_new_baseline_has_overtaken_is_not_confirmed_again():
    made = population()
    observe(made, 0, child("big", 2.50))
    observe(made, 1, child("small", 2.90))
    confirm(made, "big", [2.50, 2.51, 2.49], [3.00, 3.01, 2.99])
    decisions = confirm(made, "small", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])
    assert kinds(decisions) == ["reject_promotion"]
    assert "baseline changed" in decisions[0].reason
    assert made.baseline.commit == "big"


def the_second_of_two_winners(made: Population, start: str, first: str, second: str,
                              second_runs: list[float]):
    """Two winners found at once on `start` (islands 0 and 1): the first confirmed and promoted
    as "merged-first", then the second's confirmation, on `second_runs` against the old
    baseline's controls. Returns what that decides."""
    made.baseline.files["train.py"] = start
    observe(made, 0, Member("first", {"train.py": first}, [2.90], "first"))
    observe(made, 1, Member("second", {"train.py": second}, second_runs[:1], "second"))
    confirm(made, "first", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])
    made.rebase_baseline("merged-first")
    return confirm(made, "second", second_runs, [3.00, 3.01, 2.99])


def test_two_winners_found_at_once_on_different_lines_are_combined():
    made, start = population(), "A = 1\nB = 2\nC = 3\n"
    # The second beat the baseline it was confirmed against; its change and the first's stand
    # apart: both are tested together, like any candidate.
    decisions = the_second_of_two_winners(made, start, start.replace("A = 1", "A = 5"),
                                          start.replace("C = 3", "C = 7"), [2.90, 2.91, 2.89])
    assert kinds(decisions) == ["combine"]
    assert decisions[0].files == {"train.py": "A = 5\nB = 2\nC = 7\n"}
    assert decisions[0].against.commit == "merged-first"


def test_winners_that_come_in_together_are_combined_in_one_candidate_not_one_at_a_time():
    made = population(islands=4)
    start = made.baseline.files["train.py"] = "A = 1\nB = 2\nC = 3\nD = 4\nE = 5\n"
    changes = {"first": ("A = 1", "A = 5"), "second": ("C = 3", "C = 7"),
               "third": ("E = 5", "E = 9"), "clash": ("C = 3", "C = 8")}
    for island, (name, (old, new)) in enumerate(changes.items()):
        observe(made, island, Member(name, {"train.py": start.replace(old, new)}, [2.90], name))
    confirm(made, "first", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])
    made.rebase_baseline("merged-first")
    # Each of the others beat the baseline it was confirmed against; a candidate tested with one
    # more change at a time would wait a screening run and a confirmation for each.
    assert confirm(made, "second", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])[0].files == {
        "train.py": "A = 5\nB = 2\nC = 7\nD = 4\nE = 5\n"}
    decisions = confirm(made, "third", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])
    assert kinds(decisions) == ["combine"]
    assert decisions[0].files == {"train.py": "A = 5\nB = 2\nC = 7\nD = 4\nE = 9\n"}
    assert "with those of second" in decisions[0].reason
    # A winner whose change overlaps another's leaves that one out, and takes the rest.
    decisions = confirm(made, "clash", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])
    assert decisions[0].files == {"train.py": "A = 5\nB = 2\nC = 8\nD = 4\nE = 9\n"}


def two_candidates(made: Population) -> None:
    """A small gain (A) and a large one (C), found at once on islands 0 and 1 and confirmed side
    by side, the small one first."""
    made.baseline.files["train.py"] = "A = 1\nB = 2\nC = 3\n"
    observe(made, 0, Member("small", {"train.py": "A = 5\nB = 2\nC = 3\n"}, [2.90], "small"))
    observe(made, 1, Member("large", {"train.py": "A = 1\nB = 2\nC = 7\n"}, [2.80], "large"))
    assert set(made.confirming) == {"small", "large"}


def test_winners_confirmed_side_by_side_are_decided_together_the_best_promoted():
    made = population()
    two_candidates(made)
    # Half the large gain's runs are in when the small one's confirmation ends: it is waited for.
    decisions = made.observe_control("large", 3.00) + made.observe_confirmation("large", 2.80)
    decisions += made.observe_control("large", 3.01)
    decisions += confirm(made, "small", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])
    assert decisions == []
    decisions = made.observe_confirmation("large", 2.81) + made.observe_control("large", 2.99)
    decisions += made.observe_confirmation("large", 2.79)
    # Promoted as they ended, the small gain would have been promoted first, and the large one
    # combined with it and confirmed once more: one experiment length later.
    assert kinds(decisions) == ["promote", "reject_promotion", "combine"]
    assert made.baseline.commit == "large"
    assert "large, confirmed beside it, by more" in decisions[1].reason
    assert decisions[2].files == {"train.py": "A = 5\nB = 2\nC = 7\n"}


def test_a_confirmation_that_ended_does_not_wait_for_one_less_than_half_way_through():
    made = population()
    two_candidates(made)
    # Its other runs may still wait for a GPU: waiting for them could take a whole run or more.
    decisions = made.observe_control("large", 3.00) + made.observe_confirmation("large", 2.80)
    decisions += confirm(made, "small", [2.90, 2.91, 2.89], [3.00, 3.01, 2.99])
    assert kinds(decisions) == ["promote"]
    assert made.confirming == {"large": (2, 2)}


def test_a_winner_whose_change_overlaps_the_new_baseline_is_confirmed_again_instead():
    made, start = population(), "A = 1\nB = 2\n"
    # Its line replaces the baseline's only change: the combination would be the winner itself,
    # so it is judged against the new baseline, ahead of it within the noise.
    assert kinds(the_second_of_two_winners(
        made, start, start.replace("A = 1", "A = 5"), start.replace("A = 1", "A = 6"),
        [2.875, 2.885, 2.865])) == [
        "confirm"]


def test_a_winner_that_moved_a_line_the_new_baseline_moved_too_is_combined_with_its_own():
    made, start = population(), "A = 1\nB = 2\nC = 3\nD = 4\nE = 5\n"
    # The first winner moved A half way and changed E; the second moved A all the way.
    decisions = the_second_of_two_winners(
        made, start, start.replace("A = 1", "A = 3").replace("E = 5", "E = 9"),
        start.replace("A = 1", "A = 5"), [2.85, 2.86, 2.84])
    # Refusing to combine would lose the first's other change or the second's whole gain: its
    # line is taken, the baseline's other change kept, and the confirmation decides.
    assert kinds(decisions) == ["combine"]
    assert decisions[0].files == {"train.py": "A = 5\nB = 2\nC = 3\nD = 4\nE = 9\n"}


def test_a_combination_is_confirmed_at_once_and_its_own_run_is_not_screened():
    made, start = population(), "A = 1\nB = 2\nC = 3\n"
    first_promoted(made, start, 2.90)
    combined = Member("combined", {"train.py": "A = 5\nB = 2\nC = 7\n"}, [], "combined")
    decision = made.confirm_combination(1, combined, "cpu", "two winners")
    assert (decision.kind, decision.member, decision.against.commit) == (
        "confirm", combined, "merged-first")
    assert made.confirming == {"combined": (3, 3)}
    # Its own run, far ahead, queues no second confirmation of it.
    ahead = Member("combined", combined.files, [2.50], "combined")
    assert "confirm" not in kinds(made.observe_child(1, made.baseline, ahead, Attempt(
        "combined", "ok", None, None), screen=False))
    assert kinds(confirm(made, "combined", [2.80, 2.81, 2.79], [2.90, 2.91, 2.89])) == [
        "promote"]


def test_a_candidate_from_an_island_still_on_an_older_baseline_is_combined_with_the_new_one():
    made, start = population(), "A = 1\nB = 2\nC = 3\nD = 4\n"
    first_promoted(made, start, 2.90)
    # Island 1 kept its head, on the old code; a child of it beats the new baseline: promoting
    # it alone would drop the first winner's change.
    ahead = start.replace("D = 4", "D = 8")
    observe(made, 1, Member("ahead", {"train.py": ahead}, [2.95], "ahead"))
    later = Member("later", {"train.py": ahead.replace("C = 3", "C = 7")}, [2.50], "later")
    decisions = observe(made, 1, later)
    assert kinds(decisions)[-1] == "combine"
    assert decisions[-1].files == {"train.py": "A = 5\nB = 2\nC = 7\nD = 8\n"}


def test_children_that_only_match_a_combined_parent_behind_the_baseline_queue_nothing():
    made, start = population(), "A = 1\nB = 2\nC = 3\n"
    first_promoted(made, start, 2.50)
    winner = start.replace("C = 3", "C = 7")
    assert kinds(observe(made, 1, Member("winner", {"train.py": winner}, [2.80], "winner")))[
        -1] == "combine"
    same = Member("same", {"train.py": winner + "D = 0\n"}, [2.80], "same")
    assert "combine" not in kinds(observe(made, 1, same))


def test_a_winner_whose_result_comes_back_after_its_island_was_reseeded_is_combined():
    made, start = population(), "A = 1\nB = 2\nC = 3\n"
    old_start = made.baseline
    first_promoted(made, start, 2.50)
    assert 1 in [d.island for d in made.migrate()]
    # Island 1's child of the starting code was running meanwhile: it beats the code it changed,
    # though not the new baseline. Its change still counts, on top of the new baseline.
    second = Member("second", {"train.py": start.replace("C = 3", "C = 7")}, [2.90], "second")
    decisions = made.observe_child(1, old_start, second, Attempt("second", "ok", None, None))
    assert kinds(decisions)[-1] == "combine"
    assert decisions[-1].files == {"train.py": "A = 5\nB = 2\nC = 7\n"}
    assert decisions[-1].against.commit == "merged-first"


def test_after_a_promotion_every_island_behind_the_new_baseline_starts_from_it_at_once():
    made = population(islands=3)
    observe(made, 0, child("ahead", 2.97))  # kept on island 0, but not a candidate
    observe(made, 1, child("winner", 2.50))
    confirm(made, "winner", [2.50, 2.51, 2.49], [3.00, 3.01, 2.99])
    made.rebase_baseline("merged-winner")
    decisions = made.migrate()
    assert sorted(d.island for d in decisions if d.kind == "reseed") == [0, 1, 2]
    assert {island.head.commit for island in made.islands} == {"merged-winner"}


def test_an_island_ahead_of_the_new_baseline_keeps_its_head():
    made = population(islands=2)
    observe(made, 1, child("winner", 2.80))
    observe(made, 0, child("better", 2.50))
    confirm(made, "winner", [2.80, 2.81, 2.79], [3.00, 3.01, 2.99])
    made.rebase_baseline("merged-winner")
    assert [d.island for d in made.migrate()] == [1]
    assert made.islands[0].head.commit == "better"


def test_an_island_lagging_the_baseline_is_reseeded_from_it():
    made = population(reseed_after=3)
    observe(made, 1, child("winner", 2.50))  # island 1 wins; island 0 now lags
    confirm(made, "winner", [2.50, 2.51, 2.49], [3.00, 3.01, 2.99])
    kinds_seen = []
    for k in range(3):
        kinds_seen += kinds(observe(made, 0, child(f"dud{k}", 3.5)))
    assert kinds_seen[-1] == "reseed"
    assert made.islands[0].head.commit == "winner"
    assert made.islands[0].stale == 0


def test_maximising_objectives_promote_higher_scores():
    maximise = Objective("accuracy", "maximize", "Maximize `accuracy`")
    made = Population(maximise, Member("start", {}, []), 1)
    for run in (0.80, 0.81, 0.79):
        made.observe_baseline_run(run)
    made.noise_measured()
    decisions = made.observe_child(0, made.islands[0].head, child("better", 0.90),
                                   Attempt("better", "ok", 0.90, 0.80))
    assert kinds(decisions) == ["keep", "advance", "confirm"]
    assert kinds(confirm(made, "better", [0.90, 0.91, 0.89], [0.80, 0.81, 0.79])) == ["promote"]


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


def test_the_best_kept_members_follow_every_keep_confirmation_and_restart():
    made = population(islands=2)
    best = lambda: [m.exp_id for m in made.best_kept(5)]  # noqa: E731
    observe(made, 0, child("a", 2.99))
    observe(made, 1, child("b", 2.995))
    assert best() == ["a", "b"]
    observe(made, 0, child("worse", 3.5))  # discarded: nothing changes
    assert best() == ["a", "b"]
    observe(made, 1, child("c", 2.90))  # kept, and far enough ahead to be confirmed
    assert best() == ["c", "a", "b"]
    # Its confirmation runs replace the lucky one: it falls behind the others.
    confirm(made, "c", [3.10, 3.11, 3.09], [3.00, 3.01, 2.99])
    assert best() == ["a", "b", "c"]
    assert made.best_kept(1) == made.best_kept(5)[:1]
