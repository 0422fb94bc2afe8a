"""Proposers: the agents that suggest changes to a task's editable code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.protocol import Agent

if TYPE_CHECKING:
    from agents.strategies import Strategy

AGENT_NAMES = ("offline", "llm")


def make_agents(name: str, count: int, seed: int, *, models: Sequence[str] = (),
                max_cost: float | None = None, context_tokens: int | None = None,
                strategies: str = "") -> list[Agent]:
    """One proposer per island, each with its own seed so islands explore differently, and the
    strategy `strategies` gives its island (agents/strategies.py: "" for the default).

    The `llm` agents ask `models` (`MODEL[=WEIGHT]`, any litellm model string, or
    `local/smollm2` alone), share one router and one `Spending` (`agents[0].spending`) that stops
    them once `max_cost` dollars are spent, and build prompts of at most `context_tokens`
    (estimated). Raises ValueError for arguments that do not fit together, and
    `agents.local_model.LocalModelUnavailable` when the local model cannot start.
    """
    from agents.strategies import island_strategies

    plans = island_strategies(strategies, count) if name in AGENT_NAMES else []
    if name == "offline":
        if models or any(plan.models for plan in plans):
            raise ValueError("the offline agent takes no model; use the llm agent")
        from agents.offline import OfflineAgent

        return [OfflineAgent(seed=seed * 1000 + island, strategy=plan)
                for island, plan in enumerate(plans)]
    if name == "llm":
        return _llm_agents(models, plans, seed, max_cost, context_tokens)
    raise ValueError(f"unknown agent {name!r}; choose one of: {', '.join(AGENT_NAMES)}")


def _llm_agents(models: Sequence[str], plans: list[Strategy], seed: int, max_cost: float | None,
                context_tokens: int | None) -> list[Agent]:
    from agents.llm import CONTEXT_TOKENS, LLMAgent, ModelSpec, Spending, make_router
    from agents.local_model import LOCAL_MODEL

    count = len(plans)
    specs = [ModelSpec.parse(model) for model in models]
    # Each island's models: its strategy's own, else the search's --model.
    island_specs = [[ModelSpec.parse(model) for model in plan.models] or specs for plan in plans]
    if not all(island_specs):
        raise ValueError("the llm agent needs a model: --model MODEL[=WEIGHT]")
    every = list(dict.fromkeys(spec for chosen in island_specs for spec in chosen))
    if max_cost is not None and max_cost <= 0:
        raise ValueError(f"--max-cost must be a positive number of dollars, not {max_cost}")
    tokens = CONTEXT_TOKENS if context_tokens is None else context_tokens
    if tokens <= 0:
        raise ValueError(f"--context-tokens must be positive, not {tokens}")
    spending = Spending(max_cost)
    if LOCAL_MODEL in (spec.model for spec in every):
        if len(every) > 1:
            raise ValueError(f"{LOCAL_MODEL} is for trying the path offline and runs alone; "
                             f"do not mix it with other models")
        from agents.local_model import CONTEXT_TOKENS as LOCAL_TOKENS
        from agents.local_model import SERVED_NAME, ConstrainedEdit, shared_server

        server = shared_server(parallel=min(count, 4))
        router = make_router([ModelSpec(f"openai/{SERVED_NAME}")], api_base=server.api_base,
                             api_key="none")
        seen: set[str] = set()  # the code every island proposed or started from
        return [LLMAgent(router, spending, reply_format=ConstrainedEdit(seed * 1000 + island, seen),
                         context_tokens=min(tokens, LOCAL_TOKENS), strategy=plan)
                for island, plan in enumerate(plans)]
    router = make_router(every)
    return [LLMAgent(router, spending, context_tokens=tokens, strategy=plan,
                     models={spec.model: spec.weight for spec in chosen})
            for plan, chosen in zip(plans, island_specs, strict=True)]
