"""The LLM agent: a model reached through litellm proposes each change, seeing what was tried.

One agent works one island, by its island's strategy (agents/strategies.py: a prompt variant
added to its instructions, a temperature, perhaps models of its own). The agents of a search
share one litellm Router and one `Spending`, which adds up what the calls cost and refuses new
proposals once the cap is spent. Each call asks the model the search's bandit picked for it
(engine/search/bandit.py; the `MODEL[=WEIGHT]` weights are its prior); a call made outside a
search, with no model picked, goes to the Router's shared group, which draws one by weight.

A proposal is one call, and perhaps a second:
1. the prompt (agents/context.py) asks for a one-line description and SEARCH/REPLACE blocks;
2. the reply is applied to the editable files (agents/edits.py) and each changed .py compiled;
3. an unusable reply (no edit, an edit that does not apply, code that does not compile, nothing
   changed) gets one repair call that shows the error; a second unusable reply raises
   ProposalFailed, which the engine records as a rejected proposal.
Rate limits, timeouts and lost connections are retried after a pause, a bounded number of times;
any other error of the provider (a bad key, an unknown model) fails the proposal at once.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from agents.context import Templates, proposal_messages, repair_messages
from agents.edits import EditError, apply_edits
from agents.strategies import Strategy, default_strategy
from engine.protocol import Proposal, ProposalContext

log = logging.getLogger(__name__)

MODEL_GROUP = "researcher"  # the Router's name for the models the agents share
CONTEXT_TOKENS = 12_000  # the default prompt budget (--context-tokens)
BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)  # pauses before each retry of a rate-limited call
REQUEST_TIMEOUT_S = 600.0  # one call; reasoning models take minutes
DESCRIPTION = re.compile(r"^[\s*#_`]*description[\s*_`]*:[\s*_`]*(.+?)[\s*_`]*$",
                         re.IGNORECASE | re.MULTILINE)
DESCRIPTION_CHARS = 200
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy")


def _litellm() -> Any:
    """litellm, imported on first use: the import takes seconds, and without this variable it
    fetches its price list from the network. Its loggers lose the handler litellm gives them,
    which prints every record (four INFO lines a call) to the terminal: their records go where
    the application sends the libraries' records (the CLI: nowhere, unless --verbose)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    for name in LITELLM_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    return litellm


@dataclass(frozen=True)
class ModelSpec:
    """One model of the search, and its share of the proposals."""

    model: str  # any litellm model string: anthropic/claude-sonnet-4-5, ollama/llama3.1, ...
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """`MODEL` or `MODEL=WEIGHT`, e.g. `openai/gpt-4o=3`; raises ValueError."""
        model, sep, weight = text.strip().rpartition("=")
        if not sep:
            model, weight = text.strip(), "1"
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        if not model or not math.isfinite(value) or value <= 0:
            raise ValueError(f"--model {text!r} is not MODEL or MODEL=WEIGHT with a positive "
                             f"weight, e.g. anthropic/claude-sonnet-4-5 or openai/gpt-4o=3")
        return cls(model, value)


def make_router(models: Sequence[ModelSpec], **litellm_params: Any) -> Any:
    """A litellm Router that sends a call for a model by its name to it, and a call for
    MODEL_GROUP to one of `models`, drawn by weight.

    The Router does not retry (the agent does, with pauses it controls); it still cools down a
    model that keeps failing and sends the calls to the others meanwhile.
    """
    litellm = _litellm()
    model_list = [{"model_name": MODEL_GROUP,
                   "litellm_params": {"model": spec.model, "weight": spec.weight,
                                      **litellm_params}}
                  for spec in models]
    model_list += [{"model_name": model, "litellm_params": {"model": model, **litellm_params}}
                   for model in dict.fromkeys(spec.model for spec in models)]
    return litellm.Router(model_list=model_list, num_retries=0)


class ProposalFailed(RuntimeError):
    """A proposal that produced no usable change; it may still have cost something."""

    def __init__(self, message: str, cost_usd: float = 0.0, tokens: int = 0) -> None:
        super().__init__(message)
        self.cost_usd = cost_usd
        self.tokens = tokens


class BudgetSpent(ProposalFailed):
    """The agents' spending reached its cap: no call was made."""


class Spending:
    """What the agents of one search have spent, and the cap on it. Shared between threads."""

    def __init__(self, max_cost_usd: float | None = None) -> None:
        self.max_cost_usd = max_cost_usd
        self._lock = threading.Lock()
        self._cost = 0.0
        self._tokens = 0
        self._by_model: dict[str, tuple[int, float, int]] = {}

    @property
    def cost_usd(self) -> float:
        with self._lock:
            return self._cost

    @property
    def tokens(self) -> int:
        with self._lock:
            return self._tokens

    @property
    def by_model(self) -> dict[str, tuple[int, float, int]]:
        """Calls, dollars and tokens of each model that answered."""
        with self._lock:
            return dict(self._by_model)

    @property
    def spent(self) -> bool:
        return self.max_cost_usd is not None and self.cost_usd >= self.max_cost_usd

    def add(self, model: str, cost_usd: float, tokens: int) -> None:
        with self._lock:
            self._cost += cost_usd
            self._tokens += tokens
            calls, cost, used = self._by_model.get(model, (0, 0.0, 0))
            self._by_model[model] = (calls + 1, cost + cost_usd, used + tokens)

    def check(self) -> None:
        """Raise BudgetSpent once the cap is reached. Agents in flight may each finish one more
        proposal, so the total can pass the cap by that much."""
        if self.spent:
            raise BudgetSpent(f"the agents have spent ${self.cost_usd:.4f}, the --max-cost of "
                              f"${self.max_cost_usd:g}")


class ReplyFormat(Protocol):
    """How the model is asked to write its edit, and how its reply is read."""

    template: str  # the prompt that says how to reply: agents/prompts/reply_<template>.md

    def request(self, context: ProposalContext) -> dict:
        """Extra arguments of the completion call (a response schema, sampling)."""
        ...

    def read(self, reply: str, files: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        """The reply's description (None when it gives none) and the new contents of the files
        it changes; raises EditError."""
        ...


class SearchReplace:
    """The reply format of capable models: `DESCRIPTION: ...`, then SEARCH/REPLACE blocks (or
    whole files in fences)."""

    template = "search_replace"

    def request(self, context: ProposalContext) -> dict:
        return {}

    def read(self, reply: str, files: dict[str, str]) -> tuple[str | None, dict[str, str]]:
        found = DESCRIPTION.search(reply)
        return (found.group(1) if found else None), apply_edits(files, reply)


@dataclass
class _Tally:
    """The cost of one proposal so far, over its calls."""

    cost_usd: float = 0.0
    tokens: int = 0
    model: str = ""  # the model asked (or, outside a search, the one that answered)


class LLMAgent:
    """A proposer backed by a language model through a litellm Router."""

    name = "llm"

    def __init__(self, router: Any, spending: Spending | None = None, *,
                 reply_format: ReplyFormat | None = None,
                 context_tokens: int = CONTEXT_TOKENS,
                 strategy: Strategy | None = None,
                 models: Mapping[str, float] | None = None,
                 backoff_s: Sequence[float] = BACKOFF_S,
                 timeout_s: float = REQUEST_TIMEOUT_S,
                 mock_responses: Iterable[str | Exception] | None = None) -> None:
        """`mock_responses`, for tests: one litellm `mock_response` per call, in order (a reply,
        an exception, or "litellm.RateLimitError"); litellm answers with it through its real
        response path, usage and cost included, without a network. `models` are the Router's
        models this agent may be asked to use, with their prior weights."""
        self.router = router
        self.spending = spending or Spending()
        self.reply_format = reply_format or SearchReplace()
        self.plan = strategy or default_strategy()
        self.strategy = self.plan.name
        self.models = dict(models or {})
        templates = Templates.load(self.reply_format.template)
        if self.plan.prompt:  # a text, not a template: its $ are its own
            templates = replace(templates, system=templates.system + "\n"
                                + self.plan.prompt.replace("$", "$$") + "\n")
        self.templates = templates
        self.context_tokens = context_tokens
        self.backoff_s = tuple(backoff_s)
        self.timeout_s = timeout_s
        self._mocks = None if mock_responses is None else iter(mock_responses)
        self._lock = threading.Lock()
        self._cost = 0.0

    @property
    def cost_usd(self) -> float:
        """What this agent's calls have cost so far."""
        with self._lock:
            return self._cost

    def propose(self, context: ProposalContext) -> Proposal:
        """Ask the model for one change; raises ProposalFailed (or BudgetSpent)."""
        self.spending.check()
        files = {path: context.files[path] for path in context.editable if path in context.files}
        tally = _Tally()
        messages = proposal_messages(context, self.templates, self.context_tokens)
        reply = self._complete(messages, context, tally)
        try:
            return self._proposal(reply, files, tally)
        except EditError as error:
            problem = str(error)
        log.info("island %d: unusable reply (%s); asking for a repair", context.island, problem)
        messages = repair_messages(context, self.templates, messages, reply, problem)
        reply = self._complete(messages, context, tally)
        try:
            return self._proposal(reply, files, tally)
        except EditError as error:
            raise ProposalFailed(f"the model's reply could not be used ({problem}), nor its "
                                 f"repair ({error})", tally.cost_usd, tally.tokens) from None

    def _proposal(self, reply: str, files: dict[str, str], tally: _Tally) -> Proposal:
        description, changed = self.reply_format.read(reply, files)
        check_changes(files, changed)
        description = " ".join((description or "").split())[:DESCRIPTION_CHARS]
        return Proposal(description or describe(files, changed), changed,
                        cost_usd=tally.cost_usd, tokens=tally.tokens, model=tally.model)

    def _complete(self, messages: list[dict[str, str]], context: ProposalContext,
                  tally: _Tally) -> str:
        """One completion, retried after a pause when the provider is busy or slow."""
        litellm = _litellm()
        from litellm.types.router import RouterRateLimitError

        transient = (litellm.RateLimitError, litellm.Timeout, litellm.APIConnectionError,
                     litellm.ServiceUnavailableError, litellm.InternalServerError,
                     RouterRateLimitError)  # the last: every model is cooling down
        extra = self.reply_format.request(context)
        if self.plan.temperature is not None:
            extra = {"temperature": self.plan.temperature, **extra}
        for attempt in itertools.count():
            try:
                response = self.router.completion(model=context.model or MODEL_GROUP,
                                                  messages=messages, timeout=self.timeout_s,
                                                  **extra, **self._mock())
                break
            except transient as error:
                if attempt < len(self.backoff_s):
                    log.warning("island %d: %s; retrying in %g s", context.island,
                                _first_line(error), self.backoff_s[attempt])
                    time.sleep(self.backoff_s[attempt])
                    continue
                raise ProposalFailed(f"the model call failed {attempt + 1} times, the last with: "
                                     f"{_first_line(error)}", tally.cost_usd, tally.tokens
                                     ) from error
            except Exception as error:  # noqa: BLE001 - the provider's errors are many
                raise ProposalFailed(f"the model call failed: {_first_line(error)}",
                                     tally.cost_usd, tally.tokens) from error
        cost, tokens = _cost(litellm, response), _tokens(response)
        tally.cost_usd += cost
        tally.tokens += tokens
        with self._lock:
            self._cost += cost
        model = response._hidden_params.get("litellm_model_name") or response.model or "?"
        self.spending.add(model, cost, tokens)
        tally.model = context.model or model
        return response.choices[0].message.content or ""

    def _mock(self) -> dict:
        if self._mocks is None:
            return {}
        response = next(self._mocks, None)
        if response is None:
            raise RuntimeError("no mock response left")
        return {"mock_response": response}


def check_changes(files: dict[str, str], changed: dict[str, str]) -> None:
    """Refuse, with EditError, changes that cannot be a proposal: none at all, a file that may not
    change, or Python that does not compile."""
    if not changed:
        raise EditError("The edit changes nothing.")
    for name in sorted(changed):
        if name not in files:
            raise EditError(f"The edit creates {name}; only these files may change: "
                            f"{', '.join(files)}.")
        if name.endswith(".py"):
            try:
                compile(changed[name], name, "exec")
            except (SyntaxError, ValueError) as error:
                where = f"line {error.lineno}: " if isinstance(error, SyntaxError) else ""
                raise EditError(f"After the edit, {name} does not compile: {where}"
                                f"{getattr(error, 'msg', error)}.") from None


def describe(files: dict[str, str], changed: dict[str, str]) -> str:
    """A description for a reply that gave none: the files and the first line added."""
    for name in sorted(changed):
        diff = difflib.unified_diff(files[name].splitlines(), changed[name].splitlines(),
                                    lineterm="", n=0)
        for line in diff:
            if line.startswith("+") and not line.startswith("+++") and line[1:].strip():
                return f"edit of {name}: {line[1:].strip()}"[:DESCRIPTION_CHARS]
    return f"edit of {', '.join(sorted(changed))}"


def _cost(litellm: Any, response: Any) -> float:
    """litellm's price of a response; 0 for a model it has no price for (a local one)."""
    cost = response._hidden_params.get("response_cost")
    if cost is None:
        try:
            cost = litellm.completion_cost(completion_response=response)
        except Exception:  # noqa: BLE001 - litellm raises a plain Exception for unpriced models
            cost = 0.0
    return float(cost or 0.0)


def _tokens(response: Any) -> int:
    usage = getattr(response, "usage", None)
    return int(getattr(usage, "total_tokens", 0) or 0)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
