"""A .venv that `make` built with constraints.txt holds exactly the pinned versions of what it installed."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = ["torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "huggingface_hub", "pydantic",
        "safetensors", "gguf", "bitsandbytes", "trl"]


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if m := re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip()):
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_constraints_pin_every_core_dependency():
    pinned = pins(REPO / "constraints.txt")
    missing = [n for n in CORE if n.replace("_", "-") not in pinned]
    assert not missing, f"constraints.txt does not pin {missing}"


def test_the_venv_holds_the_pinned_versions():
    used = Path(sys.prefix) / ".multitune-constraints"
    if not used.is_file():
        pytest.skip("this environment was not built by `make` with constraints.txt")
    pinned = pins(used)
    wrong = {}
    for name in CORE:
        try:
            installed = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            continue  # an extra that was not asked for
        want = pinned[name.replace("_", "-")]
        if installed != want:
            wrong[name] = (installed, want)
    assert not wrong, f"installed vs pinned: {wrong}; run `make clean test` to rebuild .venv"
    assert used.read_text() == (REPO / "constraints.txt").read_text(), "constraints.txt changed: rebuild .venv"
