"""Run by test_gather.py under `torchrun --nproc_per_node 2`: evaluate shards, write what each rank got.

Usage: gather_worker.py TINY_MODEL_DIR OUT_DIR
"""

import json
import sys
from pathlib import Path

from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from multitune.config import validate
from multitune.data.prepare import load_splits
from multitune.eval.runner import build_eval_sets, evaluate

TASKS = [
    {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 57},
    {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 35},
    {"name": "instruct", "kind": "instruction", "source": "demo:instruct", "max_rows": 25},
]
EVAL = {"micro_batch_size": 4, "generate_max_rows": 3, "max_new_tokens": 3}


def results(model, tokenizer, rank: int, world_size: int) -> dict:
    cfg = validate({"tasks": TASKS, "eval": EVAL})
    sets = build_eval_sets(tokenizer, load_splits(cfg), cfg.data.max_seq_len, cfg.data.truncation)
    got = evaluate(model, tokenizer, sets, cfg.eval, tokenizer.pad_token_id, generate=True, rank=rank,
                   world_size=world_size)
    return {name: {"metrics": r.metrics, "predictions": r.predictions} for name, r in got.items()}


def main() -> None:
    tiny_dir, out = sys.argv[1], Path(sys.argv[2])
    accelerator = Accelerator(cpu=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    got = results(model, tokenizer, accelerator.process_index, accelerator.num_processes)
    got["world_size"] = accelerator.num_processes
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(got))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
