"""The `autoresearch` command line.

Bad input (a malformed goal file, a missing folder) exits with status 2 and one sentence; a
result of any status exits 0.
"""

from __future__ import annotations

import json

import click

from engine.runner import run_experiment
from engine.spec import GoalFileError
from engine.task import TaskError, init_task, load_task


class BadInput(click.ClickException):
    """Printed as one `Error: ...` line, exit status 2."""

    exit_code = 2


class _Commands(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (GoalFileError, TaskError) as error:
            raise BadInput(str(error)) from error


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
    click.echo(f"New task in {folder}: edit program.md (the goal) and train.py, then run "
               f"`autoresearch experiment {folder}`.")


@main.command()
@click.argument("task_dir", type=click.Path(file_okay=False))
@click.option("--budget", type=click.FloatRange(min=0, min_open=True),
              help="Training seconds (default: the goal file's training time).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed handed to train.py.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def experiment(task_dir: str, budget: float | None, seed: int, as_json: bool) -> None:
    """Train the task in TASK_DIR once, as it is, and print the harness's score."""
    task = load_task(task_dir)
    if not as_json:
        click.echo(f"Training {task.path} for {budget or task.spec.time_budget_s:g} s ...",
                   err=True)
    result = run_experiment(task.files, task.spec, seed=seed, budget_s=budget)
    record = result.to_dict()
    record[task.spec.objective.metric] = result.objective
    if as_json:
        click.echo(json.dumps(record))
        return
    click.echo(f"status: {result.status}")
    if result.message:
        click.echo(f"message: {result.message}")
    click.echo(f"{task.spec.objective.metric}: {_format(result.objective)}")
    for name, value in sorted(result.metrics.items()):
        if name != task.spec.objective.metric:
            click.echo(f"{name}: {_format(value)}")
    click.echo(f"train_wall_s: {result.train_wall_s:.1f}")
    if result.status == "crash" and result.log_tail:
        click.echo("--- end of train.py's output ---\n" + result.log_tail)


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.6g}"


if __name__ == "__main__":
    main()
