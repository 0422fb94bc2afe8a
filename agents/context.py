"""The prompt an LLM agent is given: the goal, the code, what was tried, within a token budget.

The words come from the templates in agents/prompts/ (`string.Template`: `$name` placeholders,
`$$` for a dollar sign), which a user may read and change. The island's history is what grows
over a night, so it is what gives way: the newest attempts are shown in full (description,
outcome, what its training measured and its loss curve beside its parent's, diff, why it was
refused, the end of the log of a crash), older ones in a line each and a line of what they
measured, the oldest not at all, until the estimate fits the budget. The goal and the code never
give way.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from pathlib import Path

from engine.protocol import Attempt, Measured, ProposalContext

PROMPTS = Path(__file__).parent / "prompts"
# Tokens are estimated, not counted: the estimate must be cheap, the same on every machine and for
# every model. Real tokenizers give 3.3 to 4 characters a token on code, so this errs on the safe
# side.
CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 4  # the role and separators of one chat message
FULL_RECENT = 5  # the island's newest attempts, shown in full
ONE_LINE_RECENT = 40  # the attempts before those, one line each; older ones are left out
KEEP_FULL = 2  # the newest attempts stay in full until all else that may give way has
DIFF_CHARS = 4000  # what one attempt may show of its diff, its log tail, its message
LOG_CHARS = 1500
MESSAGE_CHARS = 500
LINE_MESSAGE_CHARS = 150
# What a training measured, as shown: (label, Measured field, format)
MEASURES = (("steps", "steps", "{:,}"), ("steps/s", "steps_per_s", "{:.3g}"),
            ("params", "params", "{:,}"), ("peak memory GB", "peak_memory_gb", "{:.3g}"),
            ("final train loss", "final_train_loss", "{:.4g}"),
            ("loss spikes", "loss_spikes", "{}"))
PLACEHOLDERS = ("goal", "scores", "code", "history", "leaderboard", "promotions", "forbidden",
                "objective", "direction", "editable", "reply_format", "error")


def estimate_tokens(text: str) -> int:
    """A cheap, deterministic and cautious estimate of a text's length in tokens."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def messages_tokens(messages: list[dict[str, str]]) -> int:
    """The estimated length of a chat in tokens."""
    return sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages)


@dataclass(frozen=True)
class Templates:
    """The texts a prompt is made of, one file each in agents/prompts/."""

    system: str  # the model's role
    proposal: str  # the goal, the code, the history, what is forbidden
    repair: str  # sent after an unusable reply, with the error
    reply_format: str  # how to write the edit: reply_<format>.md

    @classmethod
    def load(cls, reply_format: str = "search_replace", folder: Path = PROMPTS) -> Templates:
        """Read the templates, refusing one with a placeholder the builder does not fill."""
        texts = {}
        for key, name in (("system", "system.md"), ("proposal", "proposal.md"),
                          ("repair", "repair.md"), ("reply_format", f"reply_{reply_format}.md")):
            path = folder / name
            text = path.read_text()
            try:
                string.Template(text).substitute(dict.fromkeys(PLACEHOLDERS, ""))
            except (KeyError, ValueError) as error:
                raise ValueError(f"the prompt template {path} has a placeholder it cannot fill "
                                 f"({error}); it may use ${', $'.join(PLACEHOLDERS)}") from None
            texts[key] = text
        return cls(**texts)


def proposal_messages(context: ProposalContext, templates: Templates,
                      budget_tokens: int) -> list[dict[str, str]]:
    """The chat asking for one proposal, compressed until its estimate fits `budget_tokens` or
    nothing is left that may give way."""
    shown = _Shown.of(context)
    while True:
        values = _values(context, templates, shown)
        messages = [{"role": "system", "content": _fill(templates.system, values)},
                    {"role": "user", "content": _fill(templates.proposal, values)}]
        if messages_tokens(messages) <= budget_tokens or not shown.give_way():
            return messages


def repair_messages(context: ProposalContext, templates: Templates, messages: list[dict[str, str]],
                    reply: str, error: str) -> list[dict[str, str]]:
    """The chat continued after an unusable reply: the reply, then what was wrong with it."""
    values = {**_values(context, templates, _Shown()), "error": error}
    return [*messages, {"role": "assistant", "content": reply},
            {"role": "user", "content": _fill(templates.repair, values)}]


@dataclass
class _Shown:
    """How much of the island's history and of the other islands' news a prompt shows."""

    full: list[Attempt] = field(default_factory=list)  # oldest first
    lines: list[Attempt] = field(default_factory=list)  # oldest first, all older than `full`
    left_out: int = 0  # older attempts not shown at all
    leaderboard: list[Attempt] = field(default_factory=list)  # best first
    promotions: list[Attempt] = field(default_factory=list)  # newest last

    @classmethod
    def of(cls, context: ProposalContext) -> _Shown:
        history = list(context.history)
        full = history[-FULL_RECENT:]
        older = history[:len(history) - len(full)]
        lines = older[-ONE_LINE_RECENT:]
        return cls(full, lines, len(older) - len(lines), list(context.leaderboard),
                   list(context.promotions))

    def give_way(self) -> bool:
        """Show a little less, least useful first; False when nothing is left to give."""
        if len(self.full) > KEEP_FULL or (self.full and not (
                self.lines or self.leaderboard or self.promotions)):
            self.lines.append(self.full.pop(0))
        elif self.lines:
            self.lines.pop(0)
            self.left_out += 1
        elif self.leaderboard or self.promotions:
            if len(self.leaderboard) >= len(self.promotions):
                self.leaderboard.pop()
            else:
                self.promotions.pop(0)
        else:
            return False
        return True


def _fill(template: str, values: dict[str, str]) -> str:
    return string.Template(template).substitute(values).strip()


def _values(context: ProposalContext, templates: Templates, shown: _Shown) -> dict[str, str]:
    editable = [path for path in context.editable if path in context.files]
    values = {
        "goal": context.goal.strip(),
        "scores": _scores(context),
        "code": "\n\n".join(_code_block(path, context.files[path]) for path in editable),
        "history": _history(context, shown),
        "leaderboard": "\n".join(
            f"{rank}. {_headline(a, context.objective)}"
            for rank, a in enumerate(shown.leaderboard, 1)) or "None yet.",
        "promotions": "\n".join(
            f"- {_headline(a, context.objective)}" for a in shown.promotions) or "None yet.",
        "forbidden": _forbidden(context),
        "objective": context.objective,
        "direction": _direction(context.direction),
        "editable": ", ".join(editable),
        "error": "",
    }
    values["reply_format"] = _fill(templates.reply_format, values)
    return values


def _scores(context: ProposalContext) -> str:
    if context.parent_objective is None:
        text = "It has no score yet."
    else:
        text = f"Its {context.objective} is {_number(context.parent_objective)}."
    if context.baseline_objective is not None:
        text += f" The shared baseline's is {_number(context.baseline_objective)}."
    return f"{text} {_direction(context.direction).capitalize()}."


def _code_block(path: str, text: str) -> str:
    fence = "````" if "```" in text else "```"
    language = "python" if path.endswith(".py") else ""
    return f"## {path}\n\n{fence}{language}\n{text.rstrip()}\n{fence}"


def _history(context: ProposalContext, shown: _Shown) -> str:
    blocks = [f"({shown.left_out} older experiments are not shown.)"] if shown.left_out else []
    if shown.lines:
        blocks.append("\n".join(f"- {_attempt_line(a, context)}" for a in shown.lines))
    blocks += [_attempt_full(a, context) for a in shown.full]
    return "\n\n".join(blocks) or "Nothing yet."


def _attempt_line(attempt: Attempt, context: ProposalContext) -> str:
    line = f"{attempt.exp_id or '?'} ({_outcome(attempt, context)}): {_one_line(attempt)}"
    if attempt.message:
        line += f" [{_clip(' '.join(attempt.message.split()), LINE_MESSAGE_CHARS)}]"
    if attempt.measured:
        line += f"\n  {_measures(attempt.measured, attempt.parent_measured or Measured())}"
    return line


def _attempt_full(attempt: Attempt, context: ProposalContext) -> str:
    parts = [f"### {attempt.exp_id or '?'}: {_one_line(attempt)}",
             f"Outcome: {_outcome(attempt, context)}."]
    if attempt.measured:
        parent = attempt.parent_measured or Measured()
        parts.append(f"Measured: {_measures(attempt.measured, parent)}")
        if attempt.measured.loss_curve:
            curve = f"Training loss {_curve(attempt.measured.loss_curve)}"
            if parent.loss_curve:
                curve += f" (parent {_curve(parent.loss_curve)})"
            parts.append(curve)
    if attempt.message:
        parts.append(f"Why: {_clip(attempt.message.strip(), MESSAGE_CHARS)}")
    if attempt.diff.strip():
        parts.append(f"The change:\n```diff\n{_clip(attempt.diff.strip(), DIFF_CHARS)}\n```")
    if attempt.log_tail.strip() and attempt.status not in ("ok", "rejected"):
        tail = _clip(attempt.log_tail.strip(), LOG_CHARS, keep_end=True)
        parts.append(f"The end of its log:\n```\n{tail}\n```")
    return "\n".join(parts)


def _outcome(attempt: Attempt, context: ProposalContext) -> str:
    if attempt.objective is None:
        return attempt.status
    text = f"{attempt.status}, {context.objective} {_number(attempt.objective)}"
    parent = attempt.parent_objective
    if parent is None:
        return text
    if attempt.objective == parent:
        verdict = "the same as"
    elif (attempt.objective < parent) == (context.direction == "minimize"):
        verdict = "better than"
    else:
        verdict = "worse than"
    return f"{text}, {verdict} its parent's {_number(parent)}"


def _measures(measured: Measured, parent: Measured) -> str:
    """What a training measured, each beside its parent's value where that is known."""
    shown = []
    for label, name, form in MEASURES:
        value, before = getattr(measured, name), getattr(parent, name)
        if value is not None:
            text = f"{label} {form.format(value)}"
            shown.append(text if before is None else f"{text} (parent {form.format(before)})")
    return " · ".join(shown)


def _curve(points: tuple[tuple[int, float], ...]) -> str:
    return "at step " + ", ".join(f"{step}: {loss:.4g}" for step, loss in points)


def _headline(attempt: Attempt, objective: str) -> str:
    score = "no score" if attempt.objective is None else f"{objective} {_number(attempt.objective)}"
    return f"{attempt.exp_id or '?'}, {score}: {_one_line(attempt)}"


def _forbidden(context: ProposalContext) -> str:
    rules = []
    if context.protected:
        rules.append(f"- Do not edit {', '.join(context.protected)}: they are protected, and "
                     f"the engine refuses any edit that touches them.")
    editable = ", ".join(context.editable)
    rules += [
        f"- Change only {editable}; an edit of any other file is refused.",
        "- Do not set, change or draw a random seed: the engine hands the code its seed, and a "
        "change that only moves a seed is re-run on fresh seeds and never promoted.",
        "- Do not change how the model is evaluated, and do not look for the evaluation data: "
        "the harness scores the model in a process of its own.",
    ]
    return "\n".join(rules)


def _direction(direction: str) -> str:
    return "higher is better" if direction == "maximize" else "lower is better"


def _one_line(attempt: Attempt) -> str:
    return " ".join(attempt.description.split()) or "(no description)"


def _number(value: float) -> str:
    return f"{value:.6g}"


def _clip(text: str, limit: int, *, keep_end: bool = False) -> str:
    """At most about `limit` characters of text, saying how much was cut."""
    if len(text) <= limit:
        return text
    cut = f"[{len(text) - limit} characters cut]"
    return f"{cut}\n{text[-limit:]}" if keep_end else f"{text[:limit]}\n{cut}"
