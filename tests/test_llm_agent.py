"""The LLM agent through litellm, offline: every reply is a litellm `mock_response`, which runs
litellm's real response path (usage and cost included) without a network."""

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agents import make_agents
from agents.llm import BudgetSpent, LLMAgent, ModelSpec, ProposalFailed, Spending, make_router
from engine.protocol import ProposalContext
from engine.search.evolution import Evolution
from engine.search.members import Member
from engine.search.options import SearchOptions
from engine.search.proposers import Proposers

REPO_ROOT = Path(__file__).resolve().parent.parent

MODEL = "anthropic/claude-sonnet-4-5"  # priced in litellm's own cost map


@pytest.fixture
def context(template) -> ProposalContext:
    spec = template.spec
    return ProposalContext(island=0, goal=spec.text, files=dict(template.files),
                           editable=spec.editable_files, objective=spec.objective.metric,
                           direction=spec.objective.direction, parent_objective=4.5,
                           baseline_objective=4.5, protected=spec.protected_files)


@pytest.fixture
def lr_line(template) -> str:
    """The line of train.py that sets the learning rate, as it is."""
    return re.search(r"^LEARNING_RATE = .*$", template.files["train.py"], re.M).group(0)


def edit(description: str | None, search: str, replace: str) -> str:
    head = f"DESCRIPTION: {description}\n\n" if description else ""
    return (f"{head}I expect a gentler step to help.\n\ntrain.py\n<<<<<<< SEARCH\n{search}\n"
            f"=======\n{replace}\n>>>>>>> REPLACE\n")


class RecordingRouter:
    """A litellm Router that keeps the messages of every call."""

    def __init__(self, router) -> None:
        self.router = router
        self.calls: list[list[dict]] = []

    def completion(self, **kwargs):
        self.calls.append(kwargs["messages"])
        return self.router.completion(**kwargs)


def agent(replies, spending=None, **options) -> LLMAgent:
    router = RecordingRouter(make_router([ModelSpec(MODEL)]))
    return LLMAgent(router, spending, mock_responses=replies, backoff_s=(0.01,), **options)


def test_a_good_edit_becomes_a_proposal_with_description_files_cost_and_tokens(context, lr_line):
    llm = agent([edit("Lower the learning rate to 2e-3", lr_line, "LEARNING_RATE = 2e-3")])
    proposal = llm.propose(context)
    assert proposal.description == "Lower the learning rate to 2e-3"
    assert list(proposal.files) == ["train.py"]
    assert "LEARNING_RATE = 2e-3\n" in proposal.files["train.py"]
    assert proposal.files["train.py"].replace("LEARNING_RATE = 2e-3", lr_line) == \
        context.files["train.py"]
    assert proposal.tokens > 0 and proposal.cost_usd > 0
    assert llm.cost_usd == pytest.approx(proposal.cost_usd)


def test_a_reply_without_a_description_gets_one_from_its_edit(context, lr_line):
    proposal = agent([edit(None, lr_line, "LEARNING_RATE = 2e-3")]).propose(context)
    assert proposal.description == "edit of train.py: LEARNING_RATE = 2e-3"


def test_an_edit_that_does_not_apply_is_repaired_once_with_the_error_shown(context, lr_line):
    llm = agent([edit("Lower it", "LEARNING_RATE = 42", "LEARNING_RATE = 1e-3"),
                 edit("Lower it", lr_line, "LEARNING_RATE = 1e-3")])
    proposal = llm.propose(context)
    assert "LEARNING_RATE = 1e-3" in proposal.files["train.py"]
    first, repair = llm.router.calls
    assert repair[:len(first)] == first
    assert repair[-2]["role"] == "assistant" and "LEARNING_RATE = 42" in repair[-2]["content"]
    assert "SEARCH text starting 'LEARNING_RATE = 42' was not found" in repair[-1]["content"]
    assert llm.spending.by_model[MODEL][0] == 2, "both calls are counted"
    assert proposal.tokens == llm.spending.tokens
    assert proposal.cost_usd == pytest.approx(llm.spending.cost_usd)


def test_code_that_does_not_compile_is_sent_back_for_repair(context, lr_line):
    llm = agent([edit("Break it", lr_line, "LEARNING_RATE = (3e-3"),
                 edit("Lower it", lr_line, "LEARNING_RATE = 1e-3")])
    llm.propose(context)
    assert "train.py does not compile: line" in llm.router.calls[1][-1]["content"]


def test_garbage_twice_fails_the_proposal_with_a_clear_message_and_its_cost(context):
    llm = agent(["You should lower the learning rate.", "Really, lower it a bit."])
    with pytest.raises(ProposalFailed, match=r"could not be used \(.*no SEARCH/REPLACE block.*\), "
                                             r"nor its repair") as failure:
        llm.propose(context)
    assert failure.value.cost_usd == pytest.approx(llm.cost_usd) and llm.cost_usd > 0
    assert failure.value.tokens > 0


def test_a_rate_limit_backs_off_and_retries_then_succeeds(context, lr_line, caplog):
    llm = agent(["litellm.RateLimitError", edit("Lower it", lr_line, "LEARNING_RATE = 1e-3")])
    with caplog.at_level(logging.WARNING, logger="agents.llm"):
        proposal = llm.propose(context)
    assert "LEARNING_RATE = 1e-3" in proposal.files["train.py"]
    assert len(llm.router.calls) == 2
    assert "RateLimitError" in caplog.text and "retrying in 0.01 s" in caplog.text


def test_rate_limits_past_the_retries_fail_the_proposal(context):
    llm = agent(["litellm.RateLimitError", "litellm.RateLimitError"])
    with pytest.raises(ProposalFailed, match="the model call failed 2 times, the last with: "
                                             "litellm.RateLimitError"):
        llm.propose(context)


def test_the_agents_stop_proposing_once_the_cost_cap_is_spent(context, lr_line):
    spending = Spending(max_cost_usd=0.0003)  # less than one call
    good = edit("Lower it", lr_line, "LEARNING_RATE = 1e-3")
    first, second = agent([good], spending), agent([good], spending)
    proposal = first.propose(context)
    assert spending.spent
    assert spending.cost_usd == pytest.approx(proposal.cost_usd)
    with pytest.raises(BudgetSpent, match=r"the agents have spent \$0\.0\d+, the --max-cost of "
                                          r"\$0\.0003"):
        second.propose(context)
    assert second.router.calls == [], "no call is made past the cap"


def test_weighted_models_share_the_work_through_one_router(context, lr_line):
    router = make_router([ModelSpec(MODEL, 1), ModelSpec("openai/gpt-4o", 2)])
    spending = Spending()
    replies = [edit("Lower it", lr_line, "LEARNING_RATE = 1e-3")] * 30
    llm = LLMAgent(router, spending, mock_responses=replies)
    for _ in range(30):
        llm.propose(context)
    calls = {model: count for model, (count, _, _) in spending.by_model.items()}
    assert set(calls) == {MODEL, "openai/gpt-4o"}
    assert sum(calls.values()) == 30


def test_a_model_is_named_with_an_optional_weight():
    assert ModelSpec.parse("openai/gpt-4o=3") == ModelSpec("openai/gpt-4o", 3.0)
    assert ModelSpec.parse("ollama/llama3.1:8b") == ModelSpec("ollama/llama3.1:8b", 1.0)
    for bad in ("openai/gpt-4o=0", "openai/gpt-4o=lots", "=2", ""):
        with pytest.raises(ValueError, match="is not MODEL or MODEL=WEIGHT"):
            ModelSpec.parse(bad)


def test_make_agents_gives_each_island_an_llm_agent_sharing_one_router_and_one_budget():
    agents = make_agents("llm", 3, 0, models=[f"{MODEL}=2", "openai/gpt-4o"], max_cost=5.0,
                         context_tokens=8000)
    assert [a.name for a in agents] == ["llm"] * 3
    assert len({id(a.router) for a in agents}) == 1
    assert len({id(a.spending) for a in agents}) == 1
    assert agents[0].spending.max_cost_usd == 5.0
    assert agents[0].context_tokens == 8000


@pytest.mark.parametrize("name, models, message", [
    ("llm", [], "the llm agent needs a model"),
    ("offline", [MODEL], "the offline agent takes no model"),
    ("llm", ["local/smollm2", MODEL], "local/smollm2 .* runs alone"),
])
def test_make_agents_refuses_models_that_do_not_fit(name, models, message):
    with pytest.raises(ValueError, match=message):
        make_agents(name, 2, 0, models=models)


# -- the end of a search -----------------------------------------------------------------------


def a_search_core(template) -> Evolution:
    return Evolution(template.spec, Member("start", dict(template.files), []),
                     SearchOptions(agents=1), "run", merge=None, commit=None)


def test_a_proposal_that_comes_back_soon_after_the_stop_is_handed_over_with_its_cost(
        template, lr_line):
    router = make_router([ModelSpec(MODEL)], mock_delay=1)  # a call that takes a second
    llm = LLMAgent(router, mock_responses=[edit("Lower it", lr_line, "LEARNING_RATE = 2e-3")])
    proposers = Proposers([llm], seed=0)
    proposers.ask(1, a_search_core(template))
    [late] = proposers.close(grace_s=30)
    assert late.proposal.description == "Lower it"
    assert late.proposal.cost_usd > 0 and late.proposal.cost_usd == llm.cost_usd


# The end of `autoresearch search --quiet`, with one agent: the CLI's logging, an LLM call that
# takes DELAY seconds, and the search's end GRACE seconds after it was asked.
END_OF_A_SEARCH = r"""
import logging, sys
from agents.llm import LLMAgent, ModelSpec, make_router
from engine.experiment.task import load_task, template_path
from engine.rundir.layout import RunDir
from engine.search.evolution import Evolution
from engine.search.options import SearchOptions
from engine.search.members import Member
from engine.search.proposers import Proposers

run_dir, verbose, delay, grace = sys.argv[1], sys.argv[2] == "verbose", *map(float, sys.argv[3:])
folder = RunDir(run_dir)
folder.create()
folder.log_to(console=True, verbose=verbose)
task = load_task(template_path())
core = Evolution(task.spec, Member("start", dict(task.files), []), SearchOptions(agents=1),
                 "run", merge=None, commit=None)
reply = "\n".join(["DESCRIPTION: wider", "train.py", "<<<<<<< SEARCH", "N_EMBD = 128",
                    "=======", "N_EMBD = 192", ">>>>>>> REPLACE", ""])
router = make_router([ModelSpec("openai/smollm2")], api_key="none", mock_delay=delay)
proposers = Proposers([LLMAgent(router, mock_responses=[reply])], seed=0)
proposers.ask(1, core)
late = proposers.close(grace)
logging.getLogger("autoresearch").info("the search ended; %d proposals came back", len(late))
"""


def end_a_search(run_dir: Path, *, verbose: bool = False, delay_s: float = 0.0,
                 grace_s: float = 60.0) -> tuple[str, str]:
    """What the process printed: on stdout, and on stderr (where its log lines go)."""
    ended = subprocess.run(
        [sys.executable, "-c", END_OF_A_SEARCH, str(run_dir), "verbose" if verbose else "quiet",
         str(delay_s), str(grace_s)], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=300)
    assert ended.returncode == 0, ended.stderr
    return ended.stdout, ended.stderr


def test_litellms_own_lines_stay_out_of_the_terminal_and_driver_log_unless_verbose(tmp_path):
    out, err = end_a_search(tmp_path / "quiet")
    assert out == ""
    [line] = err.splitlines()
    assert line.endswith("INFO the search ended; 1 proposals came back")
    assert (tmp_path / "quiet" / "driver.log").read_text().splitlines() == [line]

    out, err = end_a_search(tmp_path / "verbose", verbose=True)
    log = (tmp_path / "verbose" / "driver.log").read_text()
    assert "litellm.completion(model=openai/smollm2)" in log and "200 OK" in log
    assert err == log, "litellm printed a line of its own"


def test_a_call_still_in_flight_when_the_search_ends_comes_back_to_no_one_quietly(tmp_path):
    """The call comes back while the process exits, and fails there (litellm cannot hand its
    logging to a thread any more); it used to print `Exception cannot schedule new futures after
    shutdown` in red, after the leaderboard."""
    out, err = end_a_search(tmp_path / "run", delay_s=5, grace_s=0.5)
    assert out == ""
    [line] = err.splitlines()
    assert line.endswith("INFO the search ended; 0 proposals came back")
