"""The agents at work: one proposal in flight per island, each in a thread of its own, asked for
ahead of need so that no GPU waits for a proposer; an agent that fails backs off. When fewer
proposals are wanted than islands are free, the core's bandit (engine/search/bandit.py) says
which island goes first and which of its agent's models it asks. When the search ends, a call
still in flight gets a few seconds to come back, and is then left behind: its thread runs on to
its end, unread (the process waits for it at exit; daemon threads would not hold the process,
but one stopped inside litellm's lazy imports deadlocked the interpreter's exit). An agent that
has nothing new for a parent (NothingToPropose) is not asked again for it; when none has anything
for any island's parent, the agents are `exhausted` (a stop rule, engine/search/limits.py)."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from engine.protocol import Agent, NothingToPropose, Proposal
from engine.search.bandit import Choice
from engine.search.evolution import Evolution
from engine.search.members import Member

AGENT_RETRY_S = (1, 2, 5, 10, 30, 60)  # back-off after consecutive proposer failures
# How long the calls in flight when the search ends may still come back (and be recorded with
# what they cost): a local model's reply is seconds away, and a Ctrl-C should still feel prompt.
STOP_GRACE_S = 10.0
# Asks in a row that found every island's agent with nothing new for its parent before the agents
# count as exhausted: a parent is an island's head mostly, an archive member one time in five
# (engine/search/population.py), and those not yet drawn may still have changes to try.
EXHAUSTED_AFTER_ASKS = 30


@dataclass
class Proposed:
    """One finished call of an agent: its proposal, or the error it raised."""

    island: int
    parent: Member
    agent: str
    proposal: Proposal | Exception
    strategy: str = ""  # the island's strategy
    model: str = ""  # the model the agent was asked to use ("": its own choice)


class Proposers:
    def __init__(self, agents: list[Agent], seed: int, clock: Callable[[], float] = time.time,
                 calls: Executor | None = None) -> None:
        """`calls` runs the agents' calls (default: a thread per island; the search simulator's
        returns each on its simulated clock)."""
        self.agents = agents
        self._clock = clock
        self._rng = random.Random(seed)
        self._threads = calls or ThreadPoolExecutor(max_workers=max(len(agents), 1),
                                                    thread_name_prefix="agent")
        self._calls: dict[int, tuple[Future, Member, str]] = {}  # island -> call, parent, model
        self._choices = [Choice(island, getattr(agent, "strategy", ""),
                                getattr(agent, "models", {}))
                         for island, agent in enumerate(agents)]
        # Whether the bandit has anything to choose between: strategies or models that differ.
        self._choosing = len({(choice.strategy, model) for choice in self._choices
                              for model in choice.models or [""]}) > 1
        self._failures: dict[int, int] = {}
        self._resume_at: dict[int, float] = {}
        self._nothing_new: set[tuple[int, str]] = set()  # (island, parent commit)
        self._fruitless_asks = 0  # asks in a row where no island's agent had anything new...
        self._fruitless_since = 0  # ...since the core took its last result (`core.told`)

    @property
    def exhausted(self) -> bool:
        """Whether no agent has had anything new to propose for some time, none backing off."""
        return self._fruitless_asks >= EXHAUSTED_AFTER_ASKS

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def ask(self, wanted: int, core: Evolution) -> None:
        """Start agents while fewer than `wanted` proposals are queued or in flight: one call
        per island at a time, none for an island backing off; each time a free island drawn at
        random, or by the bandit where their strategies or models differ."""
        if core.told != self._fruitless_since:  # a result may have brought new parents
            self._fruitless_asks, self._fruitless_since = 0, core.told
        if len(core.queue) + len(self._calls) >= wanted:
            return  # nothing to start (3 turns of the loop in 5): no need to list the free islands
        now = self._clock()
        free = [choice for island, choice in enumerate(self._choices)
                if island not in self._calls and now >= self._resume_at.get(island, 0)]
        fruitless = len(free) == len(self._choices)  # until an agent is asked
        while free and len(core.queue) + len(self._calls) < wanted:
            if self._choosing:
                choice, model = core.bandit.pick(free, self._rng)
                free.remove(choice)
            else:
                choice = free.pop(self._rng.randrange(len(free)))
                model = next(iter(choice.models), "")
            parent = core.parent(choice.island)
            if (choice.island, parent.commit) in self._nothing_new:
                continue
            fruitless = False
            context = dataclasses.replace(core.context(choice.island, parent), model=model)
            future = self._threads.submit(self.agents[choice.island].propose, context)
            self._calls[choice.island] = (future, parent, model)
        self._fruitless_asks = self._fruitless_asks + 1 if fruitless else 0

    def finished(self) -> list[Proposed]:
        """The calls that ended since the last look; an agent that failed backs off (one with
        nothing new for its parent is not asked for it again)."""
        done = []
        for island, (future, parent, model) in list(self._calls.items()):
            if not future.done():
                continue
            del self._calls[island]
            try:
                proposal = future.result()
            except NothingToPropose as error:
                self._nothing_new.add((island, parent.commit))
                proposal = error
            except Exception as error:  # noqa: BLE001 - an agent's failure never ends the search
                failures = self._failures.get(island, 0)
                self._failures[island] = failures + 1
                self._resume_at[island] = self._clock() + AGENT_RETRY_S[
                    min(failures, len(AGENT_RETRY_S) - 1)]
                proposal = error
            else:
                self._failures[island] = 0
            done.append(Proposed(island, parent, self.agents[island].name, proposal,
                                 self._choices[island].strategy, model))
        return done

    def close(self, grace_s: float = STOP_GRACE_S) -> list[Proposed]:
        """Ask nothing more; give the calls in flight up to `grace_s` to end, and return those
        that did. The others are left behind, unread."""
        wait([future for future, _, _ in self._calls.values()], timeout=grace_s)
        done = self.finished()
        self._calls.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)
        return done
