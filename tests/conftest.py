"""Shared fixtures: the bundled task in memory, and a private data cache for the session."""

import os

import pytest

from engine.task import load_task, template_path


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """Experiments build the task's corpus here, not in the user's home."""
    folder = tmp_path_factory.mktemp("data-cache")
    os.environ["AUTORESEARCH_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def template():
    """The bundled task, read from disk once."""
    return load_task(template_path())


def with_train(files: dict[str, str], source: str) -> dict[str, str]:
    """The task's files with train.py replaced."""
    return {**files, "train.py": source}
