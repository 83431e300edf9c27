"""The examples in the package's docstrings run and print what they show."""

import doctest
import importlib
import pkgutil

import pytest

import multitune

MODULES = [m.name for m in pkgutil.walk_packages(multitune.__path__, "multitune.")
           if not m.name.endswith("__main__")]  # importing it runs the command line
WITH_EXAMPLES = sorted(n for n in MODULES if any(t.examples for t in doctest.DocTestFinder().find(importlib.import_module(n))))


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_the_examples_are_found():
    assert len(WITH_EXAMPLES) >= 10
