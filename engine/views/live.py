"""The live terminal view of a running search (rich): best so far and its lineage, what each GPU
runs and how long it has left, experiments per hour, GPU utilisation and keep rate."""

from __future__ import annotations

import logging
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

REFRESH_S = 0.5
log = logging.getLogger("autoresearch")


class LiveView:
    """Redrawn by the driver's own loop (no second thread reads the search's state)."""

    def __init__(self, search, console: Console | None = None) -> None:
        self.search = search
        self._live = Live(console=console or Console(stderr=True), auto_refresh=False,
                          transient=False)
        self._drawn_at = 0.0
        self._lost = False  # its terminal went away: the search goes on without it

    def __enter__(self) -> LiveView:
        self._live.__enter__()
        self.tick(force=True)
        return self

    def __exit__(self, *exc) -> None:
        self.tick(force=True)
        try:
            self._live.__exit__(*exc)
        except OSError:
            pass  # the terminal went away: said when it did

    def tick(self, force: bool = False) -> None:
        """Redraw, at most every REFRESH_S. A terminal that can no longer be written ends the
        view, not the search (the driver would take it for its run dir failing); a broken pipe
        is rich's own, which ends the process."""
        now = time.monotonic()
        if self._lost or not (force or now - self._drawn_at >= REFRESH_S):
            return
        try:
            self._live.update(self.render(), refresh=True)
        except OSError as error:
            self._lost = True
            log.warning("the live view cannot write (%s): the search goes on without it", error)
        self._drawn_at = now

    def render(self) -> Group:
        search, state = self.search, self.search.state
        population, metric = search.population, search.spec.objective.metric
        elapsed = time.time() - state.started_at
        best = population.best()
        header = Text.assemble(
            ("autoresearch ", "bold"), f"run {search.run_name} · {_clock(elapsed)} elapsed · ",
            f"{state.slots} GPU slots")
        if best.runs:
            sigma = population.sigma
            holdout = state.holdout_of(best.commit, best.exp_id)
            score = Text.assemble(
                ("best ", "bold green"), f"{metric} {best.objective:.4f} ",
                f"· holdout {holdout:.4f} " if holdout is not None else "",
                f"({best.exp_id or 'start'}) · baseline {population.baseline.objective:.4f}",
                f" · noise σ {sigma:.4f}" if sigma else " · measuring noise")
        else:
            score = Text("measuring the baseline ...", style="yellow")
        lineage = " → ".join(["start"] + [
            f"{m.exp_id} ({search.descriptions.get(m.exp_id, '')[:40]})"
            for m in population.promotions[-4:]])
        keep_rate = state.keep_rate(len(population.kept))
        counts = ", ".join(f"{status} {n}" for status, n in sorted(state.by_status.items()))
        per_hour = (state.finished - state.finished_before) / max(elapsed, 1) * 3600
        rates = Text(
            f"experiments {state.finished} ({counts}) · {per_hour:.0f}/h · keep rate "
            f"{keep_rate or 0:.0%} · confirmations "
            f"{state.confirmation_share:.0%} · GPU utilisation {state.utilisation:.0%}"
            + (f" · cost ${state.spent_usd:.2f}" if state.spent_usd else ""))
        running = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("slot", "experiment", "island", "kind", "description", "time left"):
            running.add_column(column)
        for slot, experiment in enumerate(state.running):
            left = search.budget_s - (time.time() - (experiment.started_at or time.time()))
            running.add_row(str(slot), experiment.exp_id, _island(experiment.island),
                            experiment.kind, experiment.description[:50],
                            _clock(left) if left > 0 else "scoring")
        return Group(header, score, Text(f"lineage: {lineage}"), rates, running)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes = f"{rest // 60:02d}:{rest % 60:02d}"
    return f"{hours}:{minutes}" if hours else minutes


def _island(island: int | None) -> str:
    return "-" if island is None else str(island)
