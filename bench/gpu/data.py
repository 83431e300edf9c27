"""Real token streams for bench/gpu/check.py: banking77 and commonsense_qa through multitune's own data
layer (task kinds, chat template, answer-only labels, seeded split, mixture, packing), tokenised with a
byte-level BPE trained on the rows (the Llama-3-style tokenizer `model.name: tiny` builds; no Llama 3
tokenizer can be downloaded) and its ids spread over the model's vocabulary.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gpu.shapes import Shape
from multitune.config import validate
from multitune.data.prepare import Prepared, TaskSplit, load_splits, tokenize_splits, training_conversations
from multitune.data.tokenize import IGNORE, Tokenized
from multitune.models.tiny import train_tokenizer
from multitune.tasks.base import Example

SEED = 0


@dataclass
class Streams:
    """The same training examples two ways: packed rows of `pack_len` and padded micro-batches."""

    packed: Prepared
    padded: Prepared
    pad_id: int  # in the model's vocabulary
    tokenizer: Any  # the BPE (its own ids: what a peer tokenises with)
    examples: list[Example]  # the training examples, rendered (the peer's rows)
    run_config: Any  # the RunConfig the streams were prepared with
    tasks: list[dict[str, Any]]  # its `tasks:` as a user's YAML writes them (the timed sections' configs)
    splits: list[TaskSplit]  # per task, the seeded train / validation split (the eval section's rows)

    def layout(self, name: str) -> Prepared:
        return self.packed if name == "packed" else self.padded


def data_files(data_dir: Path) -> dict[str, Path]:
    """banking77 and commonsense_qa under `data_dir`: ../shared/data's layout, or the flat copies that
    bench/gpu/wheels.sh puts in .whl/data for the GPU machine."""
    nested = {"banking77": data_dir / "banking77" / "train.parquet",
              "commonsense_qa": data_dir / "commonsense_qa" / "train.jsonl"}
    flat = {"banking77": data_dir / "banking77.parquet", "commonsense_qa": data_dir / "commonsense_qa.jsonl"}
    return nested if nested["banking77"].is_file() else flat


def task_configs(data_dir: Path, rows_per_task: int) -> list[dict[str, Any]]:
    files = data_files(data_dir)
    return [
        {"name": "banking77", "kind": "classification", "source": str(files["banking77"]), "max_rows": rows_per_task},
        {"name": "commonsense_qa", "kind": "multiple_choice", "source": str(files["commonsense_qa"]),
         "max_rows": rows_per_task},
    ]


def build_streams(shape: Shape, data_dir: Path) -> tuple[Streams, dict[str, Any]]:
    """Rows -> examples -> tokens, packed and padded, ids mapped into `shape.vocab`; and their statistics."""
    tasks = task_configs(data_dir, shape.rows_per_task)
    cfg = validate({"tasks": tasks, "data": {"max_seq_len": shape.pack_len, "packing": True}, "seed": SEED})
    splits = load_splits(cfg)
    conversations = training_conversations(splits)
    tokenizer = train_tokenizer(shape.tokenizer_vocab, [m["content"] for conv in conversations for m in conv])
    prepared = tokenize_splits(tokenizer, splits, cfg)
    table = id_table(len(tokenizer), shape.vocab)
    packed = dataclasses.replace(prepared, train=[map_ids(ex, table) for ex in prepared.train])
    padded = dataclasses.replace(packed, pack_len=None)
    examples = [ex for s in splits for ex in s.train]
    streams = Streams(packed, padded, table[tokenizer.pad_token_id], tokenizer, examples, cfg, tasks, splits)
    lengths = packed.lengths
    stats = {
        "tasks": {name: {k: s[k] for k in ("rows", "train", "epoch")} for name, s in prepared.stats.items()},
        "tokenizer": f"byte-level BPE of {len(tokenizer)} tokens trained on the rows, Llama-3-style chat "
                     f"template; ids spread over {shape.vocab} by a seeded injective map",
        "train_examples": len(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "max_tokens": max(lengths),
        "answer_share": round(sum(ex.n_answer_tokens for ex in packed.train) / sum(lengths), 4),
    }
    return streams, stats


def id_table(n_ids: int, vocab: int) -> list[int]:
    """A seeded injective map of the tokenizer's ids into [0, vocab): the embedding rows a 128k-vocabulary
    model would touch are spread over the whole table rather than packed at its start.

    >>> table = id_table(5, 100)
    >>> len(set(table)) == 5 and all(0 <= t < 100 for t in table)
    True
    """
    if n_ids > vocab:
        raise ValueError(f"the tokenizer has {n_ids} ids, more than the model's vocabulary of {vocab}")
    return random.Random(f"{SEED}:ids").sample(range(vocab), n_ids)


def map_ids(ex: Tokenized, table: list[int]) -> Tokenized:
    return Tokenized([table[i] for i in ex.input_ids], [x if x == IGNORE else table[x] for x in ex.labels],
                     ex.task_id)


def peer_rows(examples: list[Example]) -> list[dict[str, list[dict[str, str]]]]:
    """The examples as conversational prompt/completion rows, the layout TRL trains on the answer only."""
    return [{"prompt": [dict(m) for m in ex.prompt], "completion": [dict(ex.messages[-1])]} for ex in examples]
