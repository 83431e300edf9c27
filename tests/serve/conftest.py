"""Fixtures of the serving tests (a package, like tests/export: see the note in tests/export/conftest.py)."""

import pytest

from export.finished import finished_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return finished_run(tmp_path_factory)


@pytest.fixture(scope="session")
def chat_model(run_dir):
    from multitune.serve.engine import ChatModel

    return ChatModel.from_run(run_dir)
