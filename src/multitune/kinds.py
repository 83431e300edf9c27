"""What each task kind is judged by, read from the kinds' own classes (`multitune.tasks.KINDS`).

The facts of a kind (closed or open answers, label set, choice texts, scored metrics, primary metric)
live in its class, `multitune.tasks.<kind>`; this module turns them into the rules the rest of the code
asks about: which metrics an evaluation reports, which one is primary, which way is better. Everything
that depends on the kind (split, scoring, metrics, `predict`, the model card) reads the registry through
here or `multitune.tasks.kind` and never compares kind names. Pure and torch-free: the config reads it
to validate `eval.best_metric`.

- closed answers (`classification`, `multiple_choice`) come from a set of candidates and are scored:
  the model's log-likelihood of each candidate picks the answer, which `predict` writes with its score;
- open answers (`instruction`, `chat`, `summarization`) are generated, and judged by ROUGE/BLEU/chrF
  on greedy answers and by perplexity on the references.
"""

from __future__ import annotations

from collections.abc import Sequence

from multitune.tasks import KINDS, TaskKind
from multitune.tasks import kind as kind

LOWER_IS_BETTER = frozenset({"loss", "perplexity", "gen_invalid_rate"})
COUNTS = frozenset({"rows", "gen_rows", "truncated"})  # bookkeeping, not quality: left out of tables and curves
# What generation adds depends only on whether answers are closed (read as a candidate) or open (compared
# with the reference): the evaluation code computes these, not the kind.
GENERATED_CLOSED = ("gen_accuracy", "gen_macro_f1", "gen_exact_match", "gen_invalid_rate")
GENERATED_OPEN = ("rouge1", "rouge2", "rougeL", "bleu", "chrf")
CHOICE_TEXT_METRICS = ("choice_acc", "choice_acc_norm")

__all__ = ["COUNTS", "KINDS", "LOWER_IS_BETTER", "generated_metrics", "higher_is_better", "kind",
           "metric_names", "primary_metric", "primary_metrics"]


def generated_metrics(spec: TaskKind) -> tuple[str, ...]:
    """The metrics generation adds for a task of this kind."""
    return GENERATED_CLOSED if spec.closed else GENERATED_OPEN


def metric_names(kind_name: str, *, generated: bool, choice_texts: bool = False) -> list[str]:
    """The metrics an evaluation of a task of this kind reports (`generated`: with generation on)."""
    k = kind(kind_name)
    names = list(k.scored_metrics) + (list(CHOICE_TEXT_METRICS) if choice_texts and k.choice_texts else [])
    return names + (list(generated_metrics(k)) if generated else [])


def primary_metric(kind_name: str) -> str:
    """The one number that says how good a task of this kind is (its class's `primary_metric`)."""
    return kind(kind_name).primary_metric


def primary_metrics(tasks: Sequence[tuple[str, str]]) -> dict[str, str]:
    """task name -> its primary metric, from (task name, kind) pairs."""
    return {name: primary_metric(k) for name, k in tasks}


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER
