"""The one table of task kinds: for each kind, what its answers are and how it is judged.

nanochat's `Task` is the model: a dataset of conversations with some metadata and evaluation criteria.
How a kind turns rows into conversations is its module in `multitune.tasks`; its typed config is in
`multitune.config.tasks`; everything else that depends on the kind (split, scoring, metrics, `predict`,
the model card) reads this table and never compares kind names. Pure and torch-free, on the lowest
floor: the config reads it to validate `eval.best_metric`.

- closed answers (`classification`, `multiple_choice`) come from a set of candidates and are scored:
  the model's log-likelihood of each candidate picks the answer, which `predict` writes with its score;
- open answers (`instruction`, `chat`, `summarization`) are generated, and judged by ROUGE/BLEU/chrF
  on greedy answers and by perplexity on the references.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

LOWER_IS_BETTER = frozenset({"loss", "perplexity", "gen_invalid_rate"})
COUNTS = frozenset({"rows", "gen_rows", "truncated"})  # bookkeeping, not quality: left out of tables and curves
GENERATED_CLOSED = ("gen_accuracy", "gen_macro_f1", "gen_exact_match", "gen_invalid_rate")
GENERATED_OPEN = ("rouge1", "rouge2", "rougeL", "bleu", "chrf")
CHOICE_TEXT_METRICS = ("choice_acc", "choice_acc_norm")


@dataclass(frozen=True)
class Kind:
    name: str
    closed: bool
    """Answers come from a closed set of candidates and are scored; else they are generated (open)."""
    labels: bool = False
    """The candidates are the task's label set, learnt from the training rows: the labels are saved with
    the run (`data_stats.json`), a separate validation file is checked against them, `predict` and
    `eval` score against them, the metrics add F1 and a confusion matrix, a generated answer is read as
    a label (not a letter), and the model card says the model cannot answer "none of these"."""
    choice_texts: bool = False
    """Rows carry the texts of their choices, which `eval.choice_texts` scores as answers too."""
    scored_metrics: tuple[str, ...] = ("loss", "perplexity")
    """What every evaluation reports, before generation adds its own."""
    hub_task: str = "text-generation"
    """The task type the model card's `model-index` gives the Hub for this kind's results."""

    @property
    def primary_metric(self) -> str:
        """The one number that says how good a task is: accuracy for closed kinds, ROUGE-L for the rest."""
        return "accuracy" if self.closed else "rougeL"

    @property
    def generated_metrics(self) -> tuple[str, ...]:
        return GENERATED_CLOSED if self.closed else GENERATED_OPEN


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("classification", closed=True, labels=True,
         scored_metrics=("loss", "accuracy", "macro_f1", "weighted_f1"), hub_task="text-classification"),
    Kind("multiple_choice", closed=True, choice_texts=True, scored_metrics=("loss", "accuracy"),
         hub_task="multiple-choice"),
    Kind("instruction", closed=False),
    Kind("chat", closed=False),
    Kind("summarization", closed=False, hub_task="summarization"),
)}


def kind(name: str) -> Kind:
    """The table's entry for a task kind (the config admits only these names)."""
    return KINDS[name]


def metric_names(kind_name: str, *, generated: bool, choice_texts: bool = False) -> list[str]:
    """The metrics an evaluation of a task of this kind reports (`generated`: with generation on)."""
    k = kind(kind_name)
    names = list(k.scored_metrics) + (list(CHOICE_TEXT_METRICS) if choice_texts and k.choice_texts else [])
    return names + (list(k.generated_metrics) if generated else [])


def primary_metric(kind_name: str) -> str:
    return kind(kind_name).primary_metric


def primary_metrics(tasks: Sequence[tuple[str, str]]) -> dict[str, str]:
    """task name -> its primary metric, from (task name, kind) pairs."""
    return {name: primary_metric(k) for name, k in tasks}


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER
