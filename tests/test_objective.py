"""What better and best mean for an objective, in either direction."""

import pytest

from engine.experiment.objective import Objective

MINIMISE = Objective("val_bpb", "minimize", "Minimize val_bpb")
MAXIMISE = Objective("accuracy", "maximize", "Maximize `accuracy`")
# name -> score; "tie-a" and "tie-b" score the same, "none-a" and "none-b" have none
SCORES = {"none-a": None, "mid": 2.0, "tie-a": 1.0, "low": 0.5, "tie-b": 1.0, "high": 3.0,
          "none-b": None}


@pytest.mark.parametrize(("objective", "best_first"), [
    (MINIMISE, ["low", "tie-a", "tie-b", "mid", "high", "none-a", "none-b"]),
    (MAXIMISE, ["high", "mid", "tie-a", "tie-b", "low", "none-a", "none-b"]),
])
def test_the_top_few_are_the_first_of_the_ranking_ties_in_the_order_given(objective, best_first):
    assert objective.ranked(SCORES, SCORES.get) == best_first
    for count in range(len(SCORES) + 2):
        assert objective.top(SCORES, SCORES.get, count) == best_first[:count]
    assert objective.top(iter(SCORES), SCORES.get, 3) == best_first[:3]  # any iterable, once
