"""The `autoresearch` command line.

Bad input (a malformed goal file, a missing folder) exits with status 2 and one sentence; a
result of any status exits 0.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from agents import AGENT_NAMES, make_agents
from agents.strategies import recorded as recorded_strategies
from engine.cluster import ClusterUnavailable
from engine.experiment.runner import run_experiment, slot_threads, thread_env
from engine.experiment.spec import GoalFileError
from engine.experiment.task import TaskError, init_task, load_task

if TYPE_CHECKING:
    from engine.driver import Search, SearchOptions
    from engine.views.rundata import RunData


MIN_ISLANDS = 4  # islands of a search without --agents, however few its GPUs


class BadInput(click.ClickException):
    """Printed as one `Error: ...` line, exit status 2."""

    exit_code = 2


class _Commands(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (GoalFileError, TaskError, ClusterUnavailable) as error:
            raise BadInput(str(error)) from error


# Options that several commands share, spelt once.
memory_limit_option = click.option(
    "--memory-limit", type=click.FloatRange(min=0, min_open=True), metavar="GB",
    help="Kill an experiment whose processes use more memory than this, and record it as invalid "
         "(default: the goal file's Memory constraint, if any).")
grace_option = click.option(
    "--grace", type=click.FloatRange(min=0), metavar="SECONDS",
    help="Time allowed past the budget for start-up, data and the hand-over, before train.py is "
         "killed (default: 20 s or a fifth of the budget, if more).")
address_option = click.option(
    "--address", help="An existing Ray cluster (e.g. auto); default: start Ray here.")
gpus_option = click.option(
    "--gpus", type=click.IntRange(min=1), help="Logical GPUs to declare when starting Ray here: "
                                               "a CPU machine then runs this many at once.")
quiet_option = click.option("--quiet", is_flag=True, help="No live view; log lines instead.")
verbose_option = click.option(
    "--verbose", is_flag=True, help="Log the libraries' own lines too (litellm's, httpx's), in "
                                    "driver.log and with --quiet on the terminal.")


@click.group(cls=_Commands)
@click.version_option(package_name="autoresearch")
def main() -> None:
    """Automated ML research: LLM agents edit a training program, the engine trains and scores
    every change, and the best ones become the baseline."""


@main.command()
@click.argument("directory", type=click.Path(file_okay=False))
def init(directory: str) -> None:
    """Start a new task in DIRECTORY from the bundled template."""
    folder = init_task(directory)
    click.echo(f"New task in {folder}: edit program.md (the goal), prepare.py (the harness, "
               f"docs/writing-a-task.md) and train.py, then run `autoresearch check {folder}`.")


@main.command()
@click.argument("task_dir", type=click.Path(file_okay=False))
@click.option("--budget", type=click.FloatRange(min=0, min_open=True),
              help="Training seconds (default: the goal file's training time).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed handed to train.py.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@memory_limit_option
@grace_option
def experiment(task_dir: str, budget: float | None, seed: int, as_json: bool,
               memory_limit: float | None, grace: float | None) -> None:
    """Train the task in TASK_DIR once, as it is, and print the harness's score."""
    task = load_task(task_dir)
    if memory_limit is not None:
        task = dataclasses.replace(
            task, spec=dataclasses.replace(task.spec, memory_limit_gb=memory_limit))
    if not as_json:
        click.echo(f"Training {task.path} for {budget or task.spec.time_budget_s:g} s ...",
                   err=True)
    # The threads a search slot gets, so that a step takes as long here as in a search.
    threads = thread_env(slot_threads(task.spec.gpus_per_experiment))
    result = run_experiment(task.files, task.spec, seed=seed, budget_s=budget, grace_s=grace,
                            env=threads)
    record = result.to_dict()
    record[task.spec.objective.metric] = result.objective
    if as_json:
        click.echo(json.dumps(record))
        return
    click.echo(result.text(task.spec.objective.metric))


@main.command()
@click.argument("task_dir", type=click.Path(file_okay=False))
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Training seconds of the trial run.")
@click.option("--grace", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Grace past the budget to check against (default: what a search allows).")
def check(task_dir: str, budget: float, grace: float | None) -> None:
    """The task doctor: print what the engine will enforce of TASK_DIR's goal file, train its
    train.py for a few seconds, score it, and check the harness's output against the goal file.
    Exits 2, after one sentence per problem, when there is any."""
    from engine.experiment.doctor import examine

    task = load_task(task_dir)
    click.echo(f"Checking {task.path} (a {budget:g} s run of train.py) ...", err=True)
    examination = examine(task, budget, grace)
    for line in examination.lines:
        click.echo(line)
    for problem in examination.problems:
        click.echo(f"problem: {problem}")
    if examination.problems:
        raise SystemExit(2)
    click.echo("no problems found")


@main.command()
@click.argument("task_dir", type=click.Path(file_okay=False))
@click.option("--agents", type=click.IntRange(min=1),
              help=f"Islands, one proposer each [default: one per experiment the cluster runs "
                   f"at once, at least {MIN_ISLANDS}].")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True),
              help="Training seconds per experiment (default: the goal file's).")
@click.option("--max-experiments", type=click.IntRange(min=1),
              help="Stop after this many trained experiments.")
@click.option("--hours", type=click.FloatRange(min=0, min_open=True),
              help="Stop starting experiments after this long.")
@click.option("--target", type=float, help="Stop once the objective reaches this value.")
@click.option("--run-dir", type=click.Path(file_okay=False),
              help="Where the run writes everything (default: runs/TASK-TIME).")
@address_option
@gpus_option
@click.option("--agent", "agent_name", type=click.Choice(AGENT_NAMES), default="offline",
              show_default=True, help="Which proposer works the islands.")
@click.option("--model", "models", multiple=True, metavar="MODEL[=WEIGHT]",
              help="An LLM for the agents: any litellm model string (anthropic/claude-sonnet-4-5, "
                   "openai/gpt-4o, ollama/llama3.1, ...), or local/smollm2 to try the path "
                   "offline. Repeat it to share the work by weight. Implies --agent llm.")
@click.option("--max-cost", type=click.FloatRange(min=0, min_open=True), metavar="DOLLARS",
              help="Stop proposing once the agents have spent this much; queued experiments "
                   "still run.")
@click.option("--strategies", default="", metavar="NAMES|FILE",
              help="How the islands' agents work, given to the islands in turn: bundled "
                   "strategies (balanced, bold, refine, simplify; e.g. bold,refine,simplify) or "
                   "a TOML file of your own (docs/strategies.md). Default: balanced.")
@click.option("--context-tokens", type=click.IntRange(min=500), metavar="N",
              help="The most tokens of one prompt (older history is compressed to fit).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the search: proposers, parent choice and experiment seeds.")
@click.option("--noise-seeds", type=click.IntRange(min=2), default=3, show_default=True,
              help="Runs of the starting code on different seeds, to measure the noise.")
@click.option("--confirm-seeds", type=click.IntRange(min=2), default=3, show_default=True,
              help="Fresh-seed runs of a candidate before it may be promoted, each beside a "
                   "control run of the baseline.")
@memory_limit_option
@grace_option
@click.option("--tune-trials", type=click.IntRange(min=2), default=12, show_default=True,
              help="Optuna trials (through Ray Tune) that refine the knobs of each promoted "
                   "winner, alongside the agents.")
@click.option("--tune-every", type=click.IntRange(min=1), metavar="K",
              help="Also refine the baseline's knobs after every K results, promotion or not.")
@click.option("--tune-share", type=click.FloatRange(min=0, max=1, min_open=True), default=0.25,
              show_default=True, help="The most of the GPUs that tuning trials may hold at once "
                                      "(one GPU always stays with the agents).")
@click.option("--no-tune", is_flag=True, help="No knob tuning: the agents have every GPU.")
@quiet_option
@verbose_option
def search(task_dir: str, agents: int | None, budget: float | None, max_experiments: int | None,
           hours: float | None, target: float | None, run_dir: str | None,
           address: str | None, gpus: int | None, agent_name: str, models: tuple[str, ...],
           max_cost: float | None, strategies: str, context_tokens: int | None, seed: int,
           noise_seeds: int,
           confirm_seeds: int, memory_limit: float | None, grace: float | None, tune_trials: int,
           tune_every: int | None, tune_share: float, no_tune: bool, quiet: bool,
           verbose: bool) -> None:
    """Search TASK_DIR with a population of agents on Ray, until a stop condition or Ctrl-C."""
    from engine.cluster import start_ray
    from engine.driver import Search, SearchOptions

    task = load_task(task_dir)
    if models:
        agent_name = "llm"
    strategies = recorded_strategies(strategies)
    folder = Path(run_dir or Path("runs") / f"{task.path.resolve().name}-"
                                            f"{time.strftime('%Y%m%d-%H%M%S')}")
    if folder.exists() and any(folder.iterdir()):
        raise BadInput(f"{folder} already holds a run; choose another --run-dir")
    options = SearchOptions(agents=agents or MIN_ISLANDS, budget_s=budget,
                            max_experiments=max_experiments, hours=hours, target=target,
                            seed=seed, noise_seeds=noise_seeds,
                            confirm_seeds=confirm_seeds, agent=agent_name, models=models,
                            max_cost=max_cost, context_tokens=context_tokens,
                            strategies=strategies, memory_limit_gb=memory_limit, grace_s=grace,
                            tune_trials=0 if no_tune else tune_trials, tune_every=tune_every,
                            tune_share=tune_share)
    for line in task.spec.not_enforced:
        click.echo(f"not enforced (kept for the agents): {line}", err=True)
    proposers = _agents(options)  # a proposer that cannot be made is said before Ray starts
    start_ray(address, gpus)
    if agents is None:
        islands = _islands_for_the_cluster(task.spec.gpus_per_experiment)
        if islands != options.agents:
            options.agents = islands
            proposers = _agents(options)
    _run_search(Search(task, folder, options, proposers), quiet, verbose)


def _islands_for_the_cluster(gpus_per_experiment: int) -> int:
    """One island per experiment the cluster Ray started or joined runs at once (its GPUs over
    the GPUs an experiment takes), at least MIN_ISLANDS. An island has one call to its agent in
    flight at a time: with LLM calls of c seconds and experiments of L, N islands keep at most
    N * L / c experiments running (4 islands, 30 s calls and 5-minute experiments: 40).
    benchmarks/simulate.py measures one island per GPU."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return max(MIN_ISLANDS, gpus // max(gpus_per_experiment, 1))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--max-experiments", type=click.IntRange(min=1),
              help="Stop once the run has this many trained experiments in all.")
@click.option("--hours", type=click.FloatRange(min=0, min_open=True),
              help="Stop starting experiments this long after the resume.")
@click.option("--target", type=float, help="Stop once the objective reaches this value.")
@address_option
@gpus_option
@quiet_option
@verbose_option
def resume(run_dir: str, max_experiments: int | None, hours: float | None,
           target: float | None, address: str | None, gpus: int | None, quiet: bool,
           verbose: bool) -> None:
    """Continue the stopped search in RUN_DIR (Ctrl-C, a crash, a lost head node): the same
    population, islands, baseline, noise and agents' histories, with the run's own options
    unless given here. Experiments that were queued or running are run again; none that has a
    result runs twice."""
    from engine.cluster import start_ray
    from engine.driver import Search
    from engine.rundir.stopped import BrokenRunDir, resumed_options, stopped_run

    try:
        task, info = stopped_run(run_dir)
        options = resumed_options(info, max_experiments=max_experiments, hours=hours,
                                  target=target)
        search = Search.resume(task, Path(run_dir), options, _agents(options))
    except (BrokenRunDir, ValueError) as error:
        raise BadInput(f"cannot resume {run_dir}: {error}") from error
    finished = search.nothing_left()
    if finished:
        raise BadInput(f"{run_dir} is finished: {finished}")
    for problem in search.problems:
        click.echo(f"repaired: {problem}", err=True)
    start_ray(address, gpus)
    _run_search(search, quiet, verbose)


def _agents(options: SearchOptions) -> list:
    """The proposers the options ask for; one sentence and exit 2 when they cannot be made."""
    from agents.local_model import LocalModelUnavailable

    try:
        return make_agents(options.agent, options.agents, options.seed, models=options.models,
                           max_cost=options.max_cost, context_tokens=options.context_tokens,
                           strategies=options.strategies)
    except (ValueError, LocalModelUnavailable) as error:
        raise BadInput(str(error)) from error


def _run_search(search: Search, quiet: bool, verbose: bool) -> None:
    """Run a new or resumed search with the live view (or log lines), then print the
    leaderboard."""
    from engine.rundir.layout import RunDirUnwritable
    from engine.views.live import LiveView
    from engine.views.report import leaderboard

    folder = search.run_dir
    folder.log_to(console=quiet, verbose=verbose)
    try:
        if quiet:
            search.run()
        else:
            with LiveView(search) as view:
                search.run(on_tick=view.tick)
    except RunDirUnwritable as error:
        raise click.ClickException(str(error)) from error
    click.echo(leaderboard(_open_run(str(folder))))
    click.echo(f"Results: {folder}/results (Parquet), {folder}/results.tsv; "
               f"branches in {folder}/repo.git")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--to", "target", type=click.Path(file_okay=False),
              help="The git repository to receive the branches (default: the run's task folder).")
def export(run_dir: str, target: str | None) -> None:
    """Copy the branches of the run in RUN_DIR into a git repository (by default the task's own),
    as autoresearch/RUN/baseline and autoresearch/RUN/island-K. Nothing else there changes."""
    from engine.rundir.repo import GitError

    run = _open_run(run_dir)
    destination = target or run.info["task"]
    try:
        names = run.repo.export(Path(destination), run.info["run"])
    except GitError as error:
        raise BadInput(str(error)) from error
    click.echo(f"Exported {len(names)} branches into {destination}: "
               + ", ".join(names))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--verify", is_flag=True,
              help="Check the run dir instead: replay the results and compare the branches, "
                   "notes and journal with them; exit 1 when anything disagrees.")
def status(run_dir: str, as_json: bool, verify: bool) -> None:
    """Where the search in RUN_DIR stands, while it runs or after: the best so far and its
    lineage, each island's head, experiments by status, keep rate, experiments per hour, GPU
    utilisation and cost."""
    from engine.views.status import format_status, summarise

    if verify:
        _verify(run_dir)
        return
    summary = summarise(_open_run(run_dir))
    click.echo(json.dumps(summary) if as_json else format_status(summary))


def _verify(run_dir: str) -> None:
    """Replay the run without writing anything, and list what a resume would have to repair."""
    from engine.driver import Search
    from engine.rundir.stopped import BrokenRunDir, resumed_options, stopped_run

    try:
        task, info = stopped_run(run_dir)
        search = Search.resume(task, Path(run_dir), resumed_options(info), agents=[],
                               write=False)
    except (BrokenRunDir, ValueError) as error:
        raise BadInput(f"cannot verify {run_dir}: {error}") from error
    rows = len(search.store)
    if not search.problems:
        click.echo(f"{run_dir}: consistent ({rows} results; branches, notes and journal agree "
                   "with them)")
        return
    for problem in search.problems:
        click.echo(f"inconsistent: {problem}")
    click.echo(f"{len(search.problems)} problems; `autoresearch resume` repairs the branches "
               "and notes from the results.")
    raise SystemExit(1)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--by", type=click.Choice(["number", "time"]), default="number",
              show_default=True, help="Place experiments on the plot by number or by time.")
def report(run_dir: str, by: str) -> None:
    """Write progress.png and report.html into RUN_DIR: the progress plot, the leaderboard, the
    lineage of the promotions, each winner's diff, cost and utilisation, and the goal file, in
    one file that opens from disk with no server and no network."""
    from engine.views.report import write_report

    picture, page = write_report(_open_run(run_dir), by)
    click.echo(f"Wrote {picture} and {page} (open file://{page.resolve()} in a browser).")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("exp_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def reproduce(run_dir: str, exp_id: str, as_json: bool) -> None:
    """Train experiment EXP_ID of the run in RUN_DIR again, here, from its commit with its seed
    and budget, and compare the score with the recorded one (it matches when the difference is
    within 2 noise sigmas). Exits 0 whether it matches or not."""
    from engine.reproduce import format_reproduction
    from engine.reproduce import reproduce as train_again
    from engine.views.rundata import NoSuchChange

    run = _open_run(run_dir)
    try:
        row = run.committed(exp_id)
        if not as_json:
            click.echo(f"Reproducing {exp_id} (commit {row['commit'][:12]}, seed {row['seed']}, "
                       f"{row['budget_s']:g} s of training) ...", err=True)
        outcome = train_again(run, exp_id)
    except NoSuchChange as error:
        raise BadInput(str(error)) from error
    click.echo(json.dumps(outcome) if as_json else format_reproduction(outcome))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("exp_id")
def diff(run_dir: str, exp_id: str) -> None:
    """Print the change experiment EXP_ID of the run in RUN_DIR made to its parent, as a
    unified diff."""
    from engine.views.rundata import NoSuchChange

    try:
        click.echo(_open_run(run_dir).change(exp_id), nl=False)
    except NoSuchChange as error:
        raise BadInput(str(error)) from error


def _open_run(run_dir: str) -> RunData:
    """The run in `run_dir`, read now; one sentence and exit 2 when it is not a run dir."""
    from engine.views.rundata import NotARunDir, load_run

    try:
        return load_run(run_dir)
    except NotARunDir as error:
        raise BadInput(str(error)) from error


if __name__ == "__main__":
    main()
