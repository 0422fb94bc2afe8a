"""Strategies per island, and the bandit that moves the agents' calls to what pays: islands work
by the strategies they are given, every row says which, and calls go to the model whose changes
are kept."""

import math
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agents import make_agents
from agents.context import proposal_messages
from agents.llm import MODEL_GROUP, LLMAgent, _litellm
from agents.strategies import island_strategies, load_strategies
from engine.driver import Search, SearchOptions
from engine.experiment.records import ExperimentResult
from engine.experiment.task import load_task, template_path
from engine.protocol import ProposalContext
from engine.search.bandit import Bandit, Choice
from engine.search.pool import InProcessPool
from engine.tuning.knobs import find_knobs

MODEL = "openai/gpt-4o-mini"


def context_of(files: dict[str, str], island: int = 0) -> ProposalContext:
    return ProposalContext(island=island, goal="Minimize val_bpb.", files=files,
                           editable=("train.py",), objective="val_bpb", direction="minimize",
                           parent_objective=4.7, baseline_objective=4.7)


def test_the_islands_take_the_strategies_in_turn_and_a_bad_name_or_file_is_one_sentence(
        tmp_path):
    assert [s.name for s in island_strategies("bold,refine,simplify", 5)] == [
        "bold", "refine", "simplify", "bold", "refine"]
    assert [s.name for s in island_strategies("", 2)] == ["balanced", "balanced"]
    with pytest.raises(ValueError, match="unknown strategy wild; choose among balanced, bold"):
        load_strategies("bold,wild")
    own = tmp_path / "mine.toml"
    own.write_text('[careful]\ntemperature = 0.2\nprompt = "Change one number at a time."\n'
                   'models = ["openai/gpt-4o=2"]\n')
    (careful,) = load_strategies(str(own))
    assert (careful.temperature, careful.prompt, careful.models) == (
        0.2, "Change one number at a time.", ("openai/gpt-4o=2",))
    own.write_text("[careful]\ntemprature = 0.2\n")
    with pytest.raises(ValueError, match="unknown settings temprature"):
        load_strategies(str(own))


def test_the_example_of_docs_strategies_md_is_a_strategies_file(tmp_path):
    text = (Path(__file__).parents[1] / "docs" / "strategies.md").read_text()
    example = tmp_path / "my-strategies.toml"
    example.write_text(re.search(r"```toml\n(.*?)```", text, re.S)[1])
    careful, architect = load_strategies(str(example))
    assert (careful.name, careful.temperature, architect.models) == (
        "careful", 0.2, ("anthropic/claude-sonnet-4-5=3", "openai/gpt-4o"))
    assert careful.prompt.startswith("# Your approach on this island")


def test_an_llm_islands_prompt_and_temperature_are_its_strategys():
    files = dict(load_task(template_path()).files)
    agents = make_agents("llm", 3, 0, models=[MODEL], strategies="bold,refine,simplify")
    assert [agent.strategy for agent in agents] == ["bold", "refine", "simplify"]
    systems = [proposal_messages(context_of(files), agent.templates, 12_000)[0]["content"]
               for agent in agents]
    assert "bold changes" in systems[0] and "refine what works" in systems[1]
    assert "simplify" in systems[2] and "bold" not in systems[2]
    # The temperature reaches the model call.
    sent = []

    class Recording:
        def completion(self, **kwargs):
            sent.append(kwargs)
            return agents[1].router.completion(**kwargs)

    reply = "DESCRIPTION: lower it\n```\n<<<<<<< SEARCH\nLEARNING_RATE = 3e-3\n=======\n" \
            "LEARNING_RATE = 2.5e-3\n>>>>>>> REPLACE\n```\n"
    refine = LLMAgent(Recording(), strategy=agents[1].plan, models=agents[1].models,
                      mock_responses=[reply])
    proposal = refine.propose(context_of(files))
    assert sent[0]["temperature"] == 0.3 and sent[0]["model"] == MODEL_GROUP
    assert "LEARNING_RATE = 2.5e-3" in proposal.files["train.py"]


def test_an_offline_bold_island_moves_knobs_farther_than_a_refining_one():
    files = dict(load_task(template_path()).files)
    rate = {knob.label: knob.value for knob in find_knobs(files, ("train.py",))}

    def mean_log_step(agent) -> float:
        steps = []
        for _ in range(60):
            new = agent.propose(context_of(files)).files
            for knob in find_knobs({**files, **new}, ("train.py",)):
                old = rate[knob.label]
                if isinstance(old, float) and old > 0 < knob.value != old:
                    steps.append(abs(math.log(knob.value / old)))
        return sum(steps) / len(steps)

    bold, refine = make_agents("offline", 2, 0, strategies="bold,refine")
    assert mean_log_step(bold) > 2 * mean_log_step(refine)


# -- the bandit ------------------------------------------------------------------------------

GOOD, BAD = "openai/good-model", "openai/bad-model"
LINE = {GOOD: "GOOD_IDEAS = 1", BAD: "BAD_IDEAS = 1"}


def reply(model: str) -> str:
    """A change that adds its model's line again: each one new code, the same reply each time."""
    return (f"DESCRIPTION: another idea of {model}\n```\n<<<<<<< SEARCH\nhand_over(model)\n"
            f"=======\n{LINE[model]}\nhand_over(model)\n>>>>>>> REPLACE\n```\n")


def scored_by_ideas(files, spec, seed, budget_s=None, **kwargs) -> ExperimentResult:
    """Each good model's line makes the score 0.1 better, each bad one's 0.1 worse."""
    import random

    train = files["train.py"]
    objective = (4.7 - 0.1 * train.count(LINE[GOOD]) + 0.1 * train.count(LINE[BAD])
                 + random.Random(seed).gauss(0, 0.01))
    return ExperimentResult(status="ok", objective=objective, seed=seed, budget_s=0.01,
                            metrics={spec.objective.metric: objective}, train_wall_s=0.01)


def mock_router():
    """Two models through one real litellm Router, each answering with its own mock reply."""
    litellm = _litellm()
    return litellm.Router(model_list=[
        {"model_name": model, "litellm_params": {"model": model, "mock_response": reply(model)}}
        for model in (GOOD, BAD)], num_retries=0)


def test_the_bandit_moves_calls_to_the_model_whose_changes_are_kept_and_survives_a_resume(
        tmp_path):
    router = mock_router()
    agents = [LLMAgent(router, models={GOOD: 1.0, BAD: 1.0}) for _ in range(4)]
    options = SearchOptions(agents=4, budget_s=0.01, tune_trials=0, max_experiments=60,
                            confirm_seeds=2, noise_seeds=2, surplus=1, seed=3)
    search = Search(load_task(template_path()), tmp_path / "run", options, agents,
                    run=scored_by_ideas, pool=lambda: InProcessPool(1))
    search.run()

    rows = [row for row in search.store.rows() if row["kind"] == "mutation"]
    calls = Counter(row["model"] for row in rows)
    assert set(calls) == {GOOD, BAD}, "the floor keeps the worse model alive"
    assert calls[GOOD] > 2 * calls[BAD], calls
    arms = {arm["model"]: arm for arm in search.core.bandit.to_dict()}
    assert arms[GOOD]["kept"] > arms[BAD]["kept"]

    resumed = Search.resume(load_task(template_path()), tmp_path / "run", options,
                            [LLMAgent(router, models={GOOD: 1.0, BAD: 1.0}) for _ in range(4)],
                            scored_by_ideas, write=False)
    assert resumed.core.bandit.to_dict() == search.core.bandit.to_dict()


def test_the_bandit_weighs_a_calls_cost_against_the_gpu_time_and_starts_from_the_weights():
    rng = random.Random(0)
    choices = [Choice(0, "balanced", {"openai/cheap": 1.0, "openai/dear": 1.0})]
    # As often kept, but each call of the dear model costs as much as ten GPU runs.
    bandit = Bandit(budget_s=300)
    for _ in range(40):
        bandit.told("balanced", "openai/cheap", True, 0.001)
        bandit.told("balanced", "openai/dear", True, 10 * bandit.gpu_usd)
    picks = Counter(bandit.pick(choices, rng)[1] for _ in range(1000))
    assert picks["openai/cheap"] > 850 and picks["openai/dear"] >= 30  # the floor: 5 % each
    # Before any result, the --model weights lead.
    weighted = [Choice(0, "balanced", {"openai/a": 9.0, "openai/b": 1.0})]
    picks = Counter(Bandit(budget_s=300).pick(weighted, rng)[1] for _ in range(1000))
    assert picks["openai/a"] > 2 * picks["openai/b"]


def test_every_row_of_an_agents_change_records_its_islands_strategy(tmp_path):
    from benchmarks.null_experiment import null_experiment

    options = SearchOptions(agents=3, budget_s=0.01, tune_trials=0, max_experiments=18,
                            strategies="bold,refine,simplify")
    agents = make_agents("offline", 3, 0, strategies=options.strategies)
    search = Search(load_task(template_path()), tmp_path / "run", options, agents,
                    run=null_experiment, pool=lambda: InProcessPool(2))
    search.run()
    by_island = {(row["island"], row["strategy"]) for row in search.store.rows()
                 if row["kind"] == "mutation" and row["agent"] == "offline"}
    # Which islands the bandit asked in so short a search is chance; what each row records is not.
    assert by_island <= {(0, "bold"), (1, "refine"), (2, "simplify")}
    assert len(by_island) >= 2

    # status and the report compare them, by kept changes per GPU-hour and per dollar.
    shown = subprocess.run([sys.executable, "-m", "autoresearch.cli", "status",
                            str(search.run_dir)], capture_output=True, text=True).stdout
    table = shown[shown.index("strategies (kept changes per GPU-hour"):].splitlines()[1:]
    proposed = {row["strategy"] for row in search.store.rows() if row["kind"] == "mutation"
                and row["agent"] == "offline" and row["status"] != "interrupted"}
    assert sorted(line.split()[0] for line in table) == sorted(proposed)
    kept = sum(int(re.search(r"(\d+) kept", line)[1]) for line in table)
    assert kept == len([row for row in search.store.rows() if row["agent"] == "offline"
                        and row["exp_id"] in search.population.kept])
