"""A search whose changes do nothing promotes nothing: not a change of a constant by a billionth,
not a new seed. Real searches of the bundled task through Ray, scored by the null experiment
(a known landscape of the code's constants, plus noise drawn from each run's seed)."""

import re

import pytest

from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.experiment.task import load_task, template_path
from engine.protocol import Proposal
from engine.search.briefing import RANDOMNESS_ONLY

pytestmark = pytest.mark.usefixtures("ray_local")


class NoOpAgent:
    """Rewrites the learning rate as itself times (1 + k * 1e-9): a new commit every time, the
    same training in effect."""

    name = "no-op"

    def __init__(self) -> None:
        self.made = 0

    def propose(self, context) -> Proposal:
        self.made += 1
        train = re.sub(r"^LEARNING_RATE = (\S+)", rf"LEARNING_RATE = \1 * (1 + {self.made}e-9)",
                       context.files["train.py"], count=1, flags=re.M)
        return Proposal(f"learning rate times (1 + {self.made}e-9)", {"train.py": train})


class SeedAgent:
    """Moves the seed train.py hands to torch: a new random stream, and nothing else."""

    name = "seed"

    def __init__(self) -> None:
        self.made = 0

    def propose(self, context) -> Proposal:
        self.made += 1
        train = re.sub(r"^torch\.manual_seed\(.*\)$", f"torch.manual_seed(SEED + {self.made})",
                       context.files["train.py"], count=1, flags=re.M)
        return Proposal(f"seed + {self.made}", {"train.py": train})


def search_with(agent_type, tmp_path) -> tuple[Search, list[dict]]:
    options = SearchOptions(agents=2, budget_s=0.1, max_experiments=40, seed=5)
    search = Search(load_task(template_path()), tmp_path / "run", options,
                    [agent_type(), agent_type()], run=null_experiment)
    search.run()
    return search, search.store.rows()


def test_a_search_whose_changes_do_nothing_promotes_nothing(tmp_path):
    search, rows = search_with(NoOpAgent, tmp_path)
    mutations = [r for r in rows if r["kind"] == "mutation" and r["status"] == "ok"]
    assert len(mutations) >= 20
    assert search.population.promotions == []
    assert search.population.baseline.exp_id == ""  # still the starting code


def test_a_search_whose_changes_only_move_the_seed_promotes_nothing_and_says_why(tmp_path):
    search, rows = search_with(SeedAgent, tmp_path)
    mutations = [r for r in rows if r["kind"] == "mutation" and r["status"] == "ok"]
    assert len(mutations) >= 20
    assert search.population.promotions == []
    journal = {entry["exp_id"]: entry for entry in search.run_dir.journal().entries()}
    assert all(journal[r["exp_id"]]["seed_only"] for r in mutations)
    told = [attempt.message for island in search.population.islands for attempt in island.history]
    assert RANDOMNESS_ONLY in told
