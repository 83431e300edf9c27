"""Fixtures of the shipping tests. This folder is a package (it has an __init__.py) so this file is
imported as `export.conftest` and never shadows `tests/conftest.py`, which other tests import as `conftest`."""

import pytest

from export.finished import finished_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return finished_run(tmp_path_factory)
