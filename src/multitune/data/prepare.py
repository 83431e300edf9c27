"""From the config's task list to tokenised training and validation sets, with statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from multitune import tasks
from multitune.config.schema import RunConfig
from multitune.data.sources import load_rows
from multitune.data.split import train_val_split
from multitune.data.tokenize import Tokenized, tokenize_examples
from multitune.tasks.base import Example


@dataclass
class TaskSplit:
    """One task's examples after the seeded train/validation split."""

    cfg: Any
    rows: int
    train: list[Example]
    val: list[Example]

    @property
    def labels(self) -> list[str] | None:
        """A classification task's label set, in order (None for other kinds)."""
        if self.cfg.kind != "classification":
            return None
        first = next(iter(self.train or self.val), None)
        return list(first.candidates) if first and first.candidates else None


@dataclass
class Prepared:
    """What training needs: every task's tokenised training examples concatenated (task_id = position
    in `splits`), the validation sets per task, and the statistics shown to the user."""

    splits: list[TaskSplit]
    train: list[Tokenized]
    val: dict[str, list[Tokenized]]
    task_sizes: list[int]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lengths = [len(ex.input_ids) for ex in self.train]

    @property
    def task_names(self) -> list[str]:
        return [s.cfg.name for s in self.splits]

    @property
    def weights(self) -> list[float]:
        return [s.cfg.weight for s in self.splits]


def load_splits(cfg: RunConfig) -> list[TaskSplit]:
    out = []
    for task_cfg in cfg.tasks:
        rows = load_rows(task_cfg)
        examples = tasks.examples(task_cfg, rows)
        train, val = train_val_split(examples, cfg.data.val_fraction, cfg.seed)
        out.append(TaskSplit(task_cfg, len(rows), train, val))
    return out


def training_conversations(splits: Sequence[TaskSplit]) -> list[tuple]:
    return [ex.messages for s in splits for ex in s.train]


def tokenize_splits(tokenizer: Any, splits: Sequence[TaskSplit], cfg: RunConfig) -> Prepared:
    train: list[Tokenized] = []
    val: dict[str, list[Tokenized]] = {}
    sizes: list[int] = []
    stats: dict[str, dict[str, Any]] = {}
    for task_id, split in enumerate(splits):
        args = (task_id, cfg.data.max_seq_len, cfg.data.truncation)
        tok_train, s_train = tokenize_examples(tokenizer, split.train, *args)
        tok_val, s_val = tokenize_examples(tokenizer, split.val, *args)
        train.extend(tok_train)
        sizes.append(len(tok_train))
        val[split.cfg.name] = tok_val
        stats[split.cfg.name] = {
            "kind": split.cfg.kind, "source": split.cfg.source, "rows": split.rows,
            "weight": split.cfg.weight, "train": asdict(s_train), "val": asdict(s_val),
        }
        if split.labels is not None:
            stats[split.cfg.name]["labels"] = split.labels
    return Prepared(list(splits), train, val, sizes, stats)
