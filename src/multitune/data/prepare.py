"""From the config's task list to tokenised training and validation sets, with statistics.

rows (data/sources) -> examples (tasks) -> seeded split or the task's own validation split (data/split)
-> tokens with answer-only labels (data/tokenize, through data/cache) -> the mixture's counts per epoch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from multitune import kinds, tasks
from multitune.config.schema import RunConfig
from multitune.data.cache import tokenize_cached, tokenizer_fingerprint
from multitune.data.mixture import epoch_counts
from multitune.data.sources import load_rows
from multitune.data.split import train_val_split
from multitune.data.tokenize import Tokenized
from multitune.errors import UserError
from multitune.tasks.base import Example, shown


@dataclass
class TaskSplit:
    """One task's examples after the seeded train/validation split (or its named validation split)."""

    cfg: Any
    rows: int
    train: list[Example]
    val: list[Example]
    empty_rows_dropped: int = 0
    """Rows left out because a text was missing or blank (`data.empty_text: drop`), both splits."""
    val_rows: int | None = None
    """Rows read from `val_split`, when the task names one."""

    @property
    def labels(self) -> list[str] | None:
        """A classification task's label set, in order (None for other kinds)."""
        if not kinds.kind(self.cfg.kind).labels:
            return None
        first = next(iter(self.train or self.val), None)
        return list(first.candidates) if first and first.candidates else None


@dataclass
class Prepared:
    """What training needs: every task's tokenised training examples concatenated (task_id = position
    in `splits`), the validation sets per task, how many examples of each task an epoch holds, and the
    statistics shown to the user. `pack_len` is `data.max_seq_len` when packing is on, else None."""

    splits: list[TaskSplit]
    train: list[Tokenized]
    val: dict[str, list[Tokenized]]
    task_sizes: list[int]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    epoch_counts: tuple[int, ...] | None = None
    pack_len: int | None = None

    def __post_init__(self) -> None:
        self.lengths = tuple(len(ex.input_ids) for ex in self.train)
        if self.epoch_counts is None:
            self.epoch_counts = epoch_counts(self.task_sizes, self.weights)

    @property
    def task_names(self) -> list[str]:
        return [s.cfg.name for s in self.splits]

    @property
    def weights(self) -> list[float]:
        return [s.cfg.weight for s in self.splits]

    @property
    def retention(self) -> list[str]:
        """The tasks evaluated but never trained (`train: false`): no training example, no mixture share."""
        return [s.cfg.name for s in self.splits if not s.cfg.train]


def load_splits(cfg: RunConfig) -> list[TaskSplit]:
    """Every task's rows, rendered and split. Raises one `UserError` per problem found (file, row, label)."""
    return [_load_task(task_cfg, cfg) for task_cfg in cfg.tasks]


def _load_task(task_cfg: Any, cfg: RunConfig) -> TaskSplit:
    empty = cfg.data.empty_text
    rows = load_rows(task_cfg)
    rendered = tasks.render(task_cfg, rows, empty=empty)
    if task_cfg.val_split is None:
        train, val = train_val_split(rendered.examples, cfg.data.val_fraction, cfg.seed)
        return TaskSplit(task_cfg, len(rows), train, val, len(rendered.empty_rows))
    val_rows = load_rows(task_cfg, task_cfg.val_split)
    labels = None
    spec = kinds.kind(task_cfg.kind)
    if spec.labels:
        labels = _training_labels(cast(tasks.LabelSetKind, spec), rendered.examples, val_rows, task_cfg)
    val_rendered = tasks.render(task_cfg, val_rows, labels=labels, empty=empty)
    train, val = rendered.examples, val_rendered.examples
    dropped = len(rendered.empty_rows) + len(val_rendered.empty_rows)
    return TaskSplit(task_cfg, len(rows), train, val, dropped, val_rows=len(val_rows))


def _training_labels(spec: tasks.LabelSetKind, train: list[Example], val_rows: Any, task_cfg: Any) -> list[str]:
    """The label set validation is scored against: the training one. Refuses validation labels that
    training never saw (the model cannot have learnt them), listing them all at once."""
    seen = {ex.label for ex in train}
    gold = spec.gold_labels(task_cfg, val_rows)
    unseen = Counter(g for g in gold if g is not None and g not in seen)
    if unseen:
        rows = [i for i, g in enumerate(gold) if g in unseen]
        raise UserError(
            f"{len(unseen)} label(s) in the validation split {task_cfg.val_split!r} never occur in training: "
            f"{shown(f'{label!r} ({n} rows)' for label, n in unseen.most_common())}; validation rows {shown(rows)}",
            where=f"task {task_cfg.name}",
            fix="add training rows with those labels, or remove those rows from the validation split",
        )
    return list(train[0].candidates or ()) if train else sorted(seen)


def training_conversations(splits: Sequence[TaskSplit]) -> list[tuple]:
    """The conversations training sees (what the tiny model is built from); evaluated-only tasks have none."""
    return [ex.messages for s in splits if s.cfg.train for ex in s.train]


def tokenize_splits(tokenizer: Any, splits: Sequence[TaskSplit], cfg: RunConfig) -> Prepared:
    """Tokenise every task's training and validation examples (through the cache), then fix the
    mixture's examples per epoch and collect the statistics. A task with `train: false` keeps its
    validation examples only: it has no training example, so the mixture gives it no share."""
    train: list[Tokenized] = []
    val: dict[str, list[Tokenized]] = {}
    sizes: list[int] = []
    stats: dict[str, dict[str, Any]] = {}
    tokenizer_key = tokenizer_fingerprint(tokenizer)
    for task_id, split in enumerate(splits):
        args = (task_id, cfg.data.max_seq_len, cfg.data.truncation)
        trained = split.train if split.cfg.train else []
        tok_train, s_train, hit_train = tokenize_cached(tokenizer, trained, *args, tokenizer_key=tokenizer_key)
        tok_val, s_val, hit_val = tokenize_cached(tokenizer, split.val, *args, tokenizer_key=tokenizer_key)
        train.extend(tok_train)
        sizes.append(len(tok_train))
        val[split.cfg.name] = tok_val
        stats[split.cfg.name] = {
            "kind": split.cfg.kind, "source": split.cfg.source, "rows": split.rows,
            "weight": split.cfg.weight, "trained": split.cfg.train, "train": asdict(s_train), "val": asdict(s_val),
            "validation": f"split {split.cfg.val_split}" if split.cfg.val_split else
                          f"{cfg.data.val_fraction:.0%} of {split.cfg.split}, seed {cfg.seed}",
            "empty_rows_dropped": split.empty_rows_dropped,
            "tokenize_cache": "hit" if (hit_train or not trained) and (hit_val or not split.val) else "miss",
        }
        if split.labels is not None:
            stats[split.cfg.name]["labels"] = split.labels
    _refuse_empty_tasks(splits, sizes)
    mix = cfg.data.mixture
    counts = epoch_counts(sizes, [s.cfg.weight for s in splits], mix.strategy, mix.temperature or 1.0,
                          [s.cfg.max_examples_per_epoch for s in splits])
    prepared = Prepared(list(splits), train, val, sizes, stats, counts,
                        cfg.data.max_seq_len if cfg.data.packing else None)
    _add_mixture_stats(prepared, cfg.seed)
    return prepared


def _refuse_empty_tasks(splits: Sequence[TaskSplit], sizes: Sequence[int]) -> None:
    empty = [s.cfg.name for s, n in zip(splits, sizes, strict=True) if n == 0 and s.cfg.train]
    if empty:
        raise UserError(f"no training examples left for task(s) {', '.join(empty)} after dropping empty, "
                        "too long and answerless examples (data_stats.json has the counts)",
                        fix="raise data.max_seq_len, set data.truncation=truncate, or check the data")


def _add_mixture_stats(prepared: Prepared, seed: int) -> None:
    """Per task: examples and tokens in an epoch (epoch 0 for the tokens, which vary slightly between
    epochs when part of a task is drawn), and the task's share of the epoch's examples."""
    from multitune.data.mixture import mixture_order

    assert prepared.epoch_counts is not None
    task_of = [ex.task_id for ex in prepared.train]
    tokens = [0] * len(prepared.splits)
    answers = [0] * len(prepared.splits)
    for i in mixture_order(prepared.task_sizes, prepared.epoch_counts, seed, 0):
        tokens[task_of[i]] += prepared.lengths[i]
        answers[task_of[i]] += prepared.train[i].n_answer_tokens
    total = sum(prepared.epoch_counts)
    for t, name in enumerate(prepared.task_names):
        prepared.stats[name]["epoch"] = {
            "examples": prepared.epoch_counts[t], "share": round(prepared.epoch_counts[t] / total, 4),
            "tokens": tokens[t], "answer_tokens": answers[t],
        }
