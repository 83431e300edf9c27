"""Metrics from per-row records: pure functions, no model. scikit-learn, rouge-score and sacrebleu do the
maths; this module only decides what is compared with what.

Scales are the libraries' own: accuracy, F1 and ROUGE in [0, 1], BLEU and chrF in [0, 100].
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from multitune import kinds

INVALID = "<invalid>"  # what a generated answer that names no valid label counts as


def classification_metrics(gold: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """accuracy, macro_f1 and weighted_f1 exactly as scikit-learn computes them.

    F1 averages run over the classes present in `gold` or `predicted` (scikit-learn's default), except
    `INVALID`, which never counts as a class of its own: an invalid answer is a miss for its gold class.
    """
    from sklearn.metrics import accuracy_score, f1_score

    classes = sorted((set(gold) | set(predicted)) - {INVALID})
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=classes, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(gold, predicted, labels=classes, average="weighted", zero_division=0)),
    }


def per_class(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """label -> precision, recall, f1, support, for every label of the task in order (support 0 included)."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(gold, predicted, labels=list(labels), zero_division=0)
    return {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, label in enumerate(labels)
    }


def confusion(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts: row = gold label, column = predicted label, in `labels` order (invalid answers left out)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(gold, predicted, labels=list(labels)).tolist()


def most_confused(matrix: Sequence[Sequence[int]], labels: Sequence[str], top: int = 10) -> list[dict[str, Any]]:
    """The largest off-diagonal cells: [{"gold", "predicted", "count"}], largest first, ties by label order.

    >>> most_confused([[5, 2, 0], [0, 4, 3], [1, 0, 6]], ["a", "b", "c"], top=2)
    [{'gold': 'b', 'predicted': 'c', 'count': 3}, {'gold': 'a', 'predicted': 'b', 'count': 2}]
    """
    cells = [(-n, i, j) for i, row in enumerate(matrix) for j, n in enumerate(row) if i != j and n > 0]
    return [{"gold": labels[i], "predicted": labels[j], "count": -n} for n, i, j in sorted(cells)[:top]]


def generation_metrics(gold: Sequence[str], raw: Sequence[str], parsed: Sequence[str | None]) -> dict[str, float]:
    """What a chat user sees: accuracy and macro-F1 after parsing, exact match of the raw answer, and the
    rate of answers that name no valid label (`parsed` None)."""
    predicted = [INVALID if p is None else p for p in parsed]
    scored = classification_metrics(gold, predicted)
    return {
        "gen_accuracy": scored["accuracy"],
        "gen_macro_f1": scored["macro_f1"],
        "gen_exact_match": sum(r == g for r, g in zip(raw, gold, strict=True)) / len(gold),
        "gen_invalid_rate": sum(p is None for p in parsed) / len(gold),
        "gen_rows": float(len(gold)),
    }


def text_metrics(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (rouge-score, stemmed, mean over rows), corpus BLEU and chrF (sacrebleu)."""
    import sacrebleu

    rows = [rouge_row(r, p) for r, p in zip(references, predictions, strict=True)]
    n = len(rows)
    return {
        "rouge1": sum(r["rouge1"] for r in rows) / n,
        "rouge2": sum(r["rouge2"] for r in rows) / n,
        "rougeL": sum(r["rougeL"] for r in rows) / n,
        "bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score),
        "chrf": float(sacrebleu.corpus_chrf(list(predictions), [list(references)]).score),
        "gen_rows": float(n),
    }


def rouge_row(reference: str, prediction: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure of one prediction against its reference."""
    scores = _rouge_scorer().score(reference, prediction)
    return {name: float(s.fmeasure) for name, s in scores.items()}


_SCORER: list[Any] = []


def _rouge_scorer() -> Any:
    if not _SCORER:  # building it loads the stemmer: once per process
        from rouge_score import rouge_scorer

        _SCORER.append(rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True))
    return _SCORER[0]


def perplexity(loss: float) -> float:
    """exp of the mean per-token loss; inf rather than an overflow error for a hopeless model."""
    return math.exp(loss) if loss < 700 else math.inf


def choice_accuracy(gold_index: Sequence[int], logprobs: Sequence[Sequence[float]],
                    chars: Sequence[Sequence[int]]) -> dict[str, float]:
    """lm-evaluation-harness's `acc` (argmax of the choice texts' summed log-likelihood) and `acc_norm`
    (argmax of the log-likelihood divided by the text's length in characters)."""
    acc = norm = 0
    for gold, lls, lengths in zip(gold_index, logprobs, chars, strict=True):
        acc += _argmax(lls) == gold
        norm += _argmax([ll / max(n, 1) for ll, n in zip(lls, lengths, strict=True)]) == gold
    return {"choice_acc": acc / len(gold_index), "choice_acc_norm": norm / len(gold_index)}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))  # first of equals, like numpy


def task_metrics(
    kind: str, records: Sequence[Mapping[str, Any]], labels: Sequence[str] | None
) -> tuple[dict[str, float], dict[str, Any]]:
    """A task's metrics from all its records, and details (per-class scores, confusion matrix) for a
    classification task. Loss is per answer token over the whole set, as in training."""
    if not records:
        return {"rows": 0.0}, {}
    tokens = max(sum(r["answer_tokens"] for r in records), 1)
    spec = kinds.kind(kind)
    if not spec.closed:
        loss = sum(r["loss_sum"] for r in records) / tokens
        metrics = {"loss": loss, "perplexity": perplexity(loss)}
        done = [r for r in records if r["prediction"] is not None]
        if done:
            metrics |= text_metrics([r["gold"] for r in done], [r["prediction"] for r in done])
        return metrics | {"rows": float(len(records))}, {}
    gold = [r["gold"] for r in records]
    predicted = [r["prediction"] for r in records]
    metrics = {"loss": -sum(r["gold_score"] for r in records) / tokens}
    scored = classification_metrics(gold, predicted)
    details: dict[str, Any] = {}
    if spec.labels:  # F1 over the label set, and where the labels are confused
        metrics |= scored
        names = list(labels) if labels is not None else sorted(set(gold) | set(predicted))
        matrix = confusion(gold, predicted, names)
        details = {"labels": names, "per_class": per_class(gold, predicted, names), "confusion": matrix,
                   "most_confused": most_confused(matrix, names)}
    else:
        metrics["accuracy"] = scored["accuracy"]
    if "choice_scores" in records[0]:
        metrics |= choice_accuracy([r["gold_index"] for r in records], [r["choice_scores"] for r in records],
                                   [r["choice_chars"] for r in records])
    done = [r for r in records if "generated" in r]
    if done:
        metrics |= generation_metrics([r["gold"] for r in done], [r["generated"] for r in done],
                                      [r["generated_label"] for r in done])
    return metrics | {"rows": float(len(records))}, details
