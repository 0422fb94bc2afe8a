"""Refinement: Optuna, through Ray Tune, tunes the knobs of one member while the agents go on.

LLMs change structure well and constants badly; Optuna is the opposite. A `Refinement` takes the
files of one member (a freshly promoted winner), finds its knobs (engine/tuning/knobs.py) and
runs a Ray Tune experiment over them in a process of its own on the driver's node (a Ray actor,
engine/tuning/tune_run.py; every call into Ray Tune is in engine/tuning/ray_tune.py):
- the search is Optuna's TPE (`OptunaSearch`), whose first trial is the member's own values, its
  study kept in a journal file in the run dir;
- every trial writes its values into the files (only the literals change) and trains them with
  the ordinary runner on one GPU of the same pool as the mutation experiments, as a Ray task of
  its own, all on one seed, so that trials differ only by their values; at most `concurrency`
  trials run at once;
- ASHA stops a trial whose training loss, at the same number of training seconds, is worse than
  most trials' before it. The harness has no validation loss mid-training, so ASHA reads the
  training loss train.py reports (prepare.report), smoothed. That number comes from the
  candidate's own process: it can decide when a trial is cut, never its score;
- every trial that ends is written to a ledger (`trials.jsonl`, fsynced) and handed to the driver
  (`finished_trials`): the driver stays the only writer of the results and the population, and
  decides what to commit.

Everything lives under `<run dir>/tune/<name>/`: Tune's own experiment state, the Optuna journal
and the ledger. Starting a refinement whose name already has a Tune run there restores it
(`Tuner.restore`): trials that finished are not run again (a trial the ledger holds but Tune's
last snapshot still saw running reports its recorded result at once instead of training), trials
that were interrupted run again under their own ids, and the study goes on from its journal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path

import optuna
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from engine.experiment.records import ExperimentResult, Job
from engine.experiment.spec import Spec
from engine.tuning import ray_tune
from engine.tuning.knobs import Value, find_knobs
from engine.tuning.tune_run import News, TrialOutcome, TuneActor, TunePlan

log = logging.getLogger("autoresearch")

STARTUP_SHARE = 0.25  # TPE samples at random for this share of the trials (at least 2) first
STOP_WAIT_S = 60.0
NEWS_WAIT_S = 10.0  # the longest a call for news waits in the host before it answers


class Refinement:
    """Tunes the knobs of one member through Ray Tune and Optuna, run in a Tune host: a Ray actor
    on this node (engine/tuning/tune_run.py).

    Called from one thread (the driver's loop); no call waits on the host but `stop`, and
    `finished_trials` and `close` for the last news. What it says of the running trials is what
    the host last told: one call late at most."""

    def __init__(self, name: str, files: dict[str, str], spec: Spec, folder: Path, *,
                 trials: int, concurrency: int, seed: int, budget_s: float,
                 grace_s: float | None = None, expected_fingerprint: str | None = None,
                 threads: int = 1, gpus_per_trial: int = 1, early_stopping: bool = True,
                 sampler: optuna.samplers.BaseSampler | None = None,
                 run: Callable[..., ExperimentResult] | None = None,
                 recorded: Collection[str] = (), host: ray.actor.ActorHandle | None = None
                 ) -> None:
        """`name` names the Tune run kept in `folder` (the same folder resumes it); `trials`
        in all, at most `concurrency` at once, each on `seed` for `budget_s` seconds. `sampler`
        replaces TPE (a benchmark compares Optuna's random sampler); `run` replaces the runner,
        with its signature and `on_progress`. `recorded`: ids of trials the driver already holds
        results for; finished trials in the ledger that it lacks are handed over again. `host`:
        the process to run Tune in (`start_host`; default: one of its own, ended with it). Raises
        engine.tuning.knobs.KnobError for an annotation it cannot read and ValueError when there is
        nothing to tune."""
        knobs = tuple(knob for knob in find_knobs(files, spec.editable_files) if knob.tunable)
        if not knobs:
            raise ValueError("the editable files have no knob to tune")
        path = Path(folder).resolve()
        path.mkdir(parents=True, exist_ok=True)
        self.plan = TunePlan(
            name, path, dict(files), knobs,
            Job(dict(files), spec, seed, budget_s, grace_s, expected_fingerprint, threads, run,
                knobs),
            trials, max(concurrency, 1), gpus_per_trial, early_stopping,
            sampler or optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=max(2, round(trials * STARTUP_SHARE)),
                multivariate=True, constant_liar=True),
            spec.objective.direction)
        self.name, self.path, self.trials = name, path, trials
        self.start_values: dict[str, Value] = self.plan.start_values
        self.objective = spec.objective
        self.error: Exception | None = None  # what ended Tune, if not the end of its trials
        self._ended = {ended.trial_id: ended for ended in self.plan.ledgered()}
        self._unheard = [ended for ended in self._ended.values() if ended.trial_id not in recorded]
        self._host = host
        self._own_host = host is None
        self._started = False
        self._fit: ray.ObjectRef | None = None  # Tune's run: ends with it
        self._asking: ray.ObjectRef | None = None  # the call for news in flight
        self._news = News(version=0)
        self._stop_asked = False

    def start(self) -> Refinement:
        """Start (or resume) the Tune run in its host; returns self."""
        if ray_tune.resumable(self.path):
            log.info("tuning %s: resuming its Tune run", self.name)
        self._host = self._host or start_host()
        self._fit = self._host.fit.remote(self.plan, self._ended)
        self._started = True
        return self

    def finished_trials(self) -> list[TrialOutcome]:
        """Every trial that ended since the last call, in the order they ended."""
        if self.done:
            self.close()  # takes the last news
        else:
            self._hear()
        heard, self._unheard = self._unheard, []
        return heard

    @property
    def running_trials(self) -> int:
        """Trials holding a GPU now."""
        self._hear()
        return 0 if self.done else self._news.running

    @property
    def slots_wanted(self) -> int:
        """GPUs to keep for this refinement now: one per trial running, up to its concurrency.
        A trial runs once Tune has started its actor, which holds no GPU; its training task asks
        for one then and takes the next that frees, as the driver starts nothing in its place.
        Keeping GPUs for trials Tune has made but not started kept them idle for the 20 to 35 s
        an actor took to start (measured at 64 logical GPUs on 2 loaded cores)."""
        self._hear()
        if self.done or not self._news.fitting:
            return 0
        return min(self.plan.concurrency, self._news.running)

    @property
    def done(self) -> bool:
        """Whether its Tune run has ended (every trial ran, or it stopped or failed)."""
        if self._fit is None:
            return False
        return not self._started or bool(ray.wait([self._fit], timeout=0)[0])

    def best(self) -> TrialOutcome | None:
        """The trial with the best score so far, if any trial was scored."""
        return self.objective.best(self._ended.values(), lambda trial: trial.objective)

    def stop(self, timeout_s: float = STOP_WAIT_S) -> None:
        """Stop the Tune run and wait for its trials to end (at most `timeout_s`). Trials in
        flight are not handed over: a resume runs them again."""
        if self._started:
            self._stop_asked = True
            self._host.stop.remote(self.name)
            ray.wait([self._fit], timeout=timeout_s)

    def close(self) -> None:
        """Take the last news. A host of its own ends, and with it whatever of the Tune run still
        runs (its trials' actors and their training share its fate); a shared one forgets it."""
        if not self._started:
            return
        ended = self.done
        self._host.stop.remote(self.name)  # answers the call for news in flight at once
        if self._asking is not None:
            self._take(self._asking)
        self._take(self._host.news.remote(self.name, self._news.version, 0))
        if ended:
            self._why_it_ended()
        if self._own_host:
            ray.kill(self._host)
        else:
            self._host.forget.remote(self.name)
        self._started = False

    def _hear(self) -> None:
        """Take the actor's news if it has come, and ask for the next."""
        if not self._started:
            return
        if self._asking is not None and ray.wait([self._asking], timeout=0)[0]:
            self._take(self._asking)
        if self._asking is None:
            self._asking = self._host.news.remote(self.name, self._news.version, NEWS_WAIT_S)

    def _take(self, asked: ray.ObjectRef) -> None:
        self._asking = None
        try:
            news: News = ray.get(asked)
        except ray.exceptions.RayActorError:  # the actor died: its run's end says why
            return
        self._news = news
        for ended in news.ended:
            self._ended[ended.trial_id] = ended
            self._unheard.append(ended)

    def _why_it_ended(self) -> None:
        try:
            failure = ray.get(self._fit)
        except ray.exceptions.RayError as error:  # the actor died (a crash, its node's memory)
            failure = f"the actor of the Tune run died: {error}"
        if failure is not None and not self._stop_asked:
            self.error = RuntimeError(failure)
            log.error("tuning %s failed: %s", self.name, failure)


def start_host() -> ray.actor.ActorHandle:
    """A process for Tune runs on this node (engine/tuning/tune_run.py), asking for no CPU."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return TuneActor.options(num_cpus=0, scheduling_strategy=here).remote()
