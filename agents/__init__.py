"""Proposers: the agents that suggest changes to a task's editable code."""

from agents.base import Agent

AGENT_NAMES = ("offline",)


def make_agents(name: str, count: int, seed: int) -> list[Agent]:
    """One proposer per island, each with its own seed so islands explore differently."""
    if name == "offline":
        from agents.offline import OfflineAgent

        return [OfflineAgent(seed=seed * 1000 + island) for island in range(count)]
    raise ValueError(f"unknown agent {name!r}; choose one of: {', '.join(AGENT_NAMES)}")
