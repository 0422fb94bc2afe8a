"""The prompt of an LLM agent: what goes in, and how it stays within its token budget."""

from pathlib import Path

import pytest

from agents.context import (
    PROMPTS,
    Templates,
    messages_tokens,
    proposal_messages,
    repair_messages,
)
from engine.protocol import Attempt, Measured, ProposalContext

CODE = "LEARNING_RATE = 3e-3\nN_LAYER = 4\n\nprint('training')\n"
GOAL = "# Goal\nMinimize val_bpb of a tiny byte-level model.\n"


def attempt(number: int, **fields) -> Attempt:
    values = {"description": f"change number {number}", "status": "ok", "objective": 3.5,
              "parent_objective": 3.6, "exp_id": f"e{number:05d}",
              "diff": f"-N_LAYER = 4\n+N_LAYER = {number}\n"}
    return Attempt(**{**values, **fields})


PARENT_RUN = Measured(steps=3100, steps_per_s=10.3, params=858_880, peak_memory_gb=0.8,
                      final_train_loss=2.5, loss_spikes=1,
                      loss_curve=((0, 5.5), (620, 3.0), (3099, 2.5)))
BIGGER_RUN = Measured(steps=1840, steps_per_s=6.1, params=3_400_000, peak_memory_gb=1.9,
                      final_train_loss=2.4, loss_spikes=0,
                      loss_curve=((0, 5.6), (368, 2.9), (1839, 2.4)))
BIGGER_MEASURED = ("steps 1,840 (parent 3,100) · steps/s 6.1 (parent 10.3) · params 3,400,000 "
                   "(parent 858,880) · peak memory GB 1.9 (parent 0.8) · final train loss 2.4 "
                   "(parent 2.5) · loss spikes 0 (parent 1)")


def context(history=(), **fields) -> ProposalContext:
    values = dict(island=1, goal=GOAL, files={"train.py": CODE, "prepare.py": "SECRET = 1\n"},
                  editable=("train.py",), objective="val_bpb", direction="minimize",
                  parent_objective=3.6, baseline_objective=3.55, history=tuple(history),
                  protected=("prepare.py", "program.md"))
    return ProposalContext(**{**values, **fields})


def prompt(ctx: ProposalContext, budget: int = 12_000) -> str:
    return "\n".join(m["content"] for m in proposal_messages(ctx, Templates.load(), budget))


def test_the_prompt_holds_the_goal_the_editable_code_and_the_scores():
    text = prompt(context())
    assert "Minimize val_bpb of a tiny byte-level model." in text
    assert "## train.py" in text and CODE.strip() in text
    assert "SECRET" not in text, "a file the agent may not edit is not shown as code"
    assert "Its val_bpb is 3.6. The shared baseline's is 3.55. Lower is better." in text
    assert "Nothing yet." in text


def test_recent_experiments_show_their_diff_outcome_refusal_and_crash_log():
    history = [
        attempt(1, objective=3.4, parent_objective=3.6),
        attempt(2, status="crash", objective=None, message="train.py exited with status 1",
                log_tail="Traceback (most recent call last):\nRuntimeError: shape mismatch"),
        attempt(3, status="rejected", objective=None, message="refused: it changes nothing",
                diff=""),
    ]
    text = prompt(context(history))
    assert "### e00001: change number 1" in text
    assert "Outcome: ok, val_bpb 3.4, better than its parent's 3.6." in text
    assert "+N_LAYER = 1" in text
    assert "Outcome: crash." in text and "RuntimeError: shape mismatch" in text
    assert "Why: refused: it changes nothing" in text


def test_an_experiment_that_trained_shows_what_it_measured_beside_its_parents_values():
    text = prompt(context([attempt(1, measured=BIGGER_RUN, parent_measured=PARENT_RUN)]))
    block = text[text.index("### e00001"):]
    assert block.splitlines()[1:4] == [
        "Outcome: ok, val_bpb 3.5, better than its parent's 3.6.",
        f"Measured: {BIGGER_MEASURED}",
        "Training loss at step 0: 5.6, 368: 2.9, 1839: 2.4 "
        "(parent at step 0: 5.5, 620: 3, 3099: 2.5)"]


def test_what_was_not_measured_is_left_out():
    crashed = Measured(steps=120, steps_per_s=9.8, peak_memory_gb=0.7, final_train_loss=4.1,
                       loss_spikes=3)  # no params: the harness never scored it
    text = prompt(context([attempt(1, status="crash", objective=None, measured=crashed)]))
    assert ("Measured: steps 120 · steps/s 9.8 · peak memory GB 0.7 · final train loss 4.1 · "
            "loss spikes 3\n") in text
    assert "Training loss" not in text and "(parent" not in text


def test_an_experiment_that_did_not_run_shows_no_measurements():
    history = [attempt(1, status="rejected", objective=None, message="refused: it changes nothing",
                       diff="", parent_measured=PARENT_RUN),
               attempt(2, status="crash", objective=None, message="train.py exited with status 1",
                       parent_measured=PARENT_RUN)]
    for ctx in (context(history), context(history * 10)):  # in full, and in a line each
        text = prompt(ctx)
        assert "Measured:" not in text and "Training loss at" not in text
        assert "(parent " not in text and "3,100" not in text


def test_older_experiments_keep_a_line_of_what_they_measured_without_the_curve():
    history = [attempt(n, measured=BIGGER_RUN, parent_measured=PARENT_RUN) for n in range(1, 9)]
    text = prompt(context(history))
    assert (f"- e00001 (ok, val_bpb 3.5, better than its parent's 3.6): change number 1\n"
            f"  {BIGGER_MEASURED}\n") in text
    assert text.count("Training loss at") == 5, "only the experiments shown in full"


def test_long_histories_with_measurements_stay_within_the_budget_oldest_compressed_first():
    history = [attempt(n, measured=BIGGER_RUN, parent_measured=PARENT_RUN,
                       diff="".join(f"-x = {i}\n+x = {i + n}\n" for i in range(40)))
               for n in range(1, 301)]
    full_sizes = []
    for budget in (1_500, 3_000, 6_000, 12_000):
        messages = proposal_messages(context(history), Templates.load(), budget)
        text = "\n".join(m["content"] for m in messages)
        assert messages_tokens(messages) <= budget
        shown = [n for n in range(1, 301) if f"e{n:05d} (" in text or f"### e{n:05d}:" in text]
        assert shown == list(range(shown[0], 301)), "what is left out is the oldest"
        assert f"### e00300: change number 300\nOutcome: ok, val_bpb 3.5, better than its " \
               f"parent's 3.6.\nMeasured: {BIGGER_MEASURED}" in text
        full_sizes.append(text.count("\nMeasured: "))
        assert text.count(BIGGER_MEASURED) == len(shown)
    assert full_sizes[0] < full_sizes[-1] == 5, "a bigger budget shows more in full"


def test_the_leaderboard_and_the_promotions_of_every_island_are_shown():
    leaderboard = (attempt(7, description="wider model", objective=3.1),
                   attempt(9, description="cosine schedule", objective=3.2))
    promotions = (attempt(7, description="wider model", objective=3.1),)
    text = prompt(context(leaderboard=leaderboard, promotions=promotions))
    assert "1. e00007, val_bpb 3.1: wider model" in text
    assert "2. e00009, val_bpb 3.2: cosine schedule" in text
    assert "- e00007, val_bpb 3.1: wider model" in text


def test_the_forbidden_list_names_the_protected_files_the_seed_and_the_evaluation():
    text = prompt(context())
    assert "Do not edit prepare.py, program.md" in text
    assert "Change only train.py" in text
    assert "random seed" in text
    assert "how the model is evaluated" in text


def test_a_long_history_is_compressed_under_the_budget_and_the_newest_stay_in_full():
    history = [attempt(n, diff="".join(f"-x = {i}\n+x = {i + n}\n" for i in range(40)))
               for n in range(1, 201)]
    ctx = context(history)
    budget = 1500
    messages = proposal_messages(ctx, Templates.load(), budget)
    text = "\n".join(m["content"] for m in messages)
    assert messages_tokens(messages) <= budget
    assert "### e00200: change number 200" in text and "### e00199:" in text
    assert "+x = 200" in text, "the newest experiment keeps its diff"
    assert "### e00195:" not in text, "older experiments lose their diffs first"
    assert "older experiments are not shown" in text, "the oldest are dropped"
    assert "e00001" not in text
    assert messages_tokens(proposal_messages(ctx, Templates.load(), 100_000)) > budget


def test_the_goal_and_the_code_never_give_way_to_the_budget():
    text = prompt(context([attempt(n) for n in range(1, 30)]), budget=10)
    assert GOAL.strip() in text and CODE.strip() in text


def test_a_repair_shows_the_reply_and_what_was_wrong_with_it():
    ctx = context()
    templates = Templates.load()
    first = proposal_messages(ctx, templates, 12_000)
    messages = repair_messages(ctx, templates, first, "just lower it", "no SEARCH block")
    assert messages[:2] == first
    assert messages[2] == {"role": "assistant", "content": "just lower it"}
    assert messages[3]["role"] == "user"
    assert "could not be used: no SEARCH block" in messages[3]["content"]


def test_the_templates_are_files_a_user_can_change(tmp_path):
    for name in ("system.md", "repair.md", "reply_search_replace.md"):
        (tmp_path / name).write_text("$reply_format" if name == "repair.md" else "be brief")
    (tmp_path / "proposal.md").write_text("GOAL:\n$goal\nCODE:\n$code")
    messages = proposal_messages(context(), Templates.load(folder=tmp_path), 12_000)
    assert messages[0]["content"] == "be brief"
    assert messages[1]["content"].startswith("GOAL:\n# Goal")
    (tmp_path / "proposal.md").write_text("$goal $mood")
    with pytest.raises(ValueError, match=r"proposal.md has a placeholder it cannot fill"):
        Templates.load(folder=tmp_path)


def test_no_line_a_prompt_shows_is_a_line_of_a_bundled_file():
    """A small model copies the example edit of the reply format: 3 proposals out of 3 were the
    example's `LEARNING_RATE = 3e-3` -> `2e-3`, a real line of the bundled train.py. An example
    that is in no bundled file can only be copied into an edit that does not apply."""
    root = Path(__file__).resolve().parent.parent
    bundled = [*root.glob("train_template/*.py"), *root.glob("examples/*/*.py")]
    assert len(bundled) >= 6
    code = {line.strip() for path in bundled for line in path.read_text().splitlines()
            if line.strip()}
    for prompt_file in sorted(PROMPTS.glob("*.md")):
        shown = {line.strip() for line in prompt_file.read_text().splitlines()}
        assert shown & code == set(), prompt_file.name
