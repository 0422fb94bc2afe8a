"""Shared fixtures: the bundled task in memory, and a private data cache for the session."""

import os
import re
import subprocess
import sys

import pytest

from engine.experiment.task import load_task, template_path


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """Experiments find the bundled task's corpus here, not in the user's home: built once
    before any test, so that no test's first experiment spends its grace building it."""
    folder = tmp_path_factory.mktemp("data-cache")
    os.environ["AUTORESEARCH_CACHE"] = str(folder)
    subprocess.run([sys.executable, "prepare.py"], cwd=template_path(), check=True,
                   capture_output=True)
    return folder


@pytest.fixture(scope="session")
def template():
    """The bundled task, read from disk once."""
    return load_task(template_path())


def with_train(files: dict[str, str], source: str) -> dict[str, str]:
    """The task's files with train.py replaced."""
    return {**files, "train.py": source}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session, with 4 logical GPUs on this CPU machine."""
    import ray

    start_local_ray()
    yield ray
    ray.shutdown()


def start_local_ray() -> None:
    """The session's local Ray (`ray_local`), started."""
    import ray

    import benchmarks.null_experiment
    from engine.cluster import start_ray

    # Workers import the engine from the installed project; test helpers travel by value.
    ray.cloudpickle.register_pickle_by_value(benchmarks.null_experiment)
    start_ray(None, gpus=4, cpus=2)


class ScriptedAgent:
    """A proposer that makes the given edits in order, then distinct harmless ones, and keeps
    every context it was given."""

    name = "scripted"

    def __init__(self, edits: list[dict[str, str]]) -> None:
        self.edits = list(edits)
        self.contexts = []
        self.made = 0

    def propose(self, context):
        from engine.protocol import Proposal

        self.contexts.append(context)
        self.made += 1
        if self.edits:
            files = self.edits.pop(0)
            return Proposal(f"scripted edit {self.made}", files)
        # A statement, not a comment: a change to comments alone is refused before any GPU.
        train = context.files["train.py"] + f'\nVARIANT = "{context.island}-{self.made}"\n'
        return Proposal(f"variant {self.made}", {"train.py": train})


@pytest.fixture
def slow_start_task(tmp_path):
    """The bundled task with a learning rate set 30x too low, and every other constant frozen
    (not a literal, so the offline proposer leaves it alone): a clear winner exists."""
    folder = tmp_path / "task"
    folder.mkdir()
    for name in ("program.md", "prepare.py"):
        (folder / name).write_text((template_path() / name).read_text())
    source = (template_path() / "train.py").read_text()

    def freeze(match: re.Match) -> str:
        name, value = match.group(1), match.group(2)
        if name == "LEARNING_RATE":
            return f"{name} = 1e-4"
        wrapper = "str" if value.startswith('"') else "float" if "." in value else "int"
        return f"{name} = {wrapper}({value})"

    source = re.sub(r"^([A-Z_0-9]+) = ([^\s#]+)", freeze, source, flags=re.M)
    (folder / "train.py").write_text(source)
    return load_task(folder)
