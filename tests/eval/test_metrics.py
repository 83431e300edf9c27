"""Metrics on fixed predictions: exact values, and equal to what scikit-learn / rouge-score / sacrebleu say."""

import math

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from multitune.eval.metrics import (
    INVALID,
    choice_accuracy,
    classification_metrics,
    confusion,
    generation_metrics,
    most_confused,
    per_class,
    task_metrics,
    text_metrics,
)
from multitune.tasks.answers import parse_choice, parse_label

GOLD = ["a", "a", "b", "b", "c", "c"]
PRED = ["a", "b", "b", "b", "c", "a"]


def test_classification_metrics_equal_hand_computed_and_sklearn_values():
    got = classification_metrics(GOLD, PRED)
    # a: P 1/2 R 1/2 F 1/2; b: P 2/3 R 1 F 4/5; c: P 1 R 1/2 F 2/3 -> macro (1/2 + 4/5 + 2/3) / 3
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert got["weighted_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)  # equal supports
    assert got == {
        "accuracy": accuracy_score(GOLD, PRED),
        "macro_f1": f1_score(GOLD, PRED, average="macro"),
        "weighted_f1": f1_score(GOLD, PRED, average="weighted"),
    }


def test_per_class_and_confusion_follow_the_label_order_and_keep_unseen_labels():
    rows = per_class(GOLD, PRED, ["c", "b", "a", "d"])
    assert rows["b"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert rows["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    p, r, f, s = precision_recall_fscore_support(GOLD, PRED, labels=["c", "b", "a"], zero_division=0)
    assert [rows[k]["f1"] for k in "cba"] == pytest.approx(list(f))
    matrix = confusion(GOLD, PRED, ["a", "b", "c"])
    assert matrix == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert matrix == confusion_matrix(GOLD, PRED, labels=["a", "b", "c"]).tolist()
    assert most_confused(matrix, ["a", "b", "c"]) == [
        {"gold": "a", "predicted": "b", "count": 1}, {"gold": "c", "predicted": "a", "count": 1}]


def test_an_invalid_generated_answer_is_a_miss_not_a_class():
    got = generation_metrics(["a", "b", "b", "a"], ["a", "b.", "banana", "A"], ["a", "b", None, "a"])
    assert got["gen_accuracy"] == 0.75
    assert got["gen_exact_match"] == 0.25  # only "a" is the label exactly as written
    assert got["gen_invalid_rate"] == 0.25
    assert got["gen_rows"] == 4.0
    # F1 over the real classes a and b; the invalid answer lowers b's recall.
    want = f1_score(["a", "b", "b", "a"], ["a", "b", INVALID, "a"], labels=["a", "b"], average="macro")
    assert got["gen_macro_f1"] == pytest.approx(want) == pytest.approx((1.0 + 2 / 3) / 2)


@pytest.mark.parametrize(("text", "want"), [
    ("Claim", "Claim"), ("  claim. ", "Claim"), ("Not a Claim", "Not a Claim"), ('"not a claim"', "Not a Claim"),
    ("Not a Claim, because it asks a question", "Not a Claim"), ("Claimed", None), ("", None), ("Maybe", None),
])
def test_parse_label(text, want):
    assert parse_label(text, ["Claim", "Not a Claim"]) == want


def test_parse_label_keeps_opaque_label_names_apart():
    labels = ["card_arrival", "card_arrival_delay", "reverted_card_payment?"]
    assert parse_label("card_arrival_delay", labels) == "card_arrival_delay"
    assert parse_label("card_arrival", labels) == "card_arrival"
    assert parse_label("card_arrival_x", labels) is None
    assert parse_label("reverted_card_payment?", labels) == "reverted_card_payment?"


@pytest.mark.parametrize(("text", "want"), [
    ("B", "B"), ("b", "B"), ("C.", "C"), ("(D)", "D"), ("A) a fishing pole", "A"), ("E: bank", "E"),
    ("The answer is B.", "B"), ("Answer: (c)", "C"), ("Because", None), ("F", None), ("", None),
])
def test_parse_choice(text, want):
    assert parse_choice(text, ["A", "B", "C", "D", "E"]) == want


def test_text_metrics_equal_the_libraries_and_are_perfect_on_identical_text():
    import sacrebleu
    from rouge_score import rouge_scorer

    refs = ["the cat sat on the mat", "a quick brown fox jumps"]
    preds = ["the cat sat on a mat", "the slow brown fox jumped"]
    got = text_metrics(refs, preds)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL"):
        assert got[name] == pytest.approx(sum(scorer.score(r, p)[name].fmeasure for r, p in zip(refs, preds, strict=True)) / 2)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert got["rouge1"] == pytest.approx((5 / 6 + 3 / 5) / 2)  # stemming makes jumped == jumps
    same = text_metrics(refs, refs)
    assert (same["rouge1"], same["rougeL"], same["chrf"]) == (1.0, 1.0, 100.0)
    assert same["bleu"] == pytest.approx(100.0)


def test_choice_accuracy_is_harness_acc_and_acc_norm():
    # Row 1: the short wrong choice has the higher total, the long right one the higher per character.
    got = choice_accuracy([1, 0], [[-4.0, -6.0], [-1.0, -3.0]], [[2, 12], [5, 5]])
    assert got == {"choice_acc": 0.5, "choice_acc_norm": 1.0}


def closed(gold, prediction, gold_score, tokens, **extra):
    return {"gold": gold, "prediction": prediction, "gold_score": gold_score, "answer_tokens": tokens,
            "correct": gold == prediction, **extra}


def test_task_metrics_of_a_classification_task():
    records = [closed("a", "a", -1.0, 2), closed("b", "a", -3.0, 3), closed("b", "b", -0.5, 3)]
    metrics, details = task_metrics("classification", records, ["a", "b", "c"])
    assert metrics["loss"] == pytest.approx(4.5 / 8)  # summed gold log-likelihood per answer token
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["macro_f1"] == pytest.approx(f1_score(["a", "b", "b"], ["a", "a", "b"], average="macro"))
    assert metrics["rows"] == 3.0 and "gen_accuracy" not in metrics
    assert details["labels"] == ["a", "b", "c"]
    assert details["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert details["per_class"]["c"]["support"] == 0


def test_task_metrics_of_a_generation_task():
    records = [{"gold": "x y", "prediction": "x y", "loss_sum": 2.0, "answer_tokens": 4},
               {"gold": "z", "prediction": None, "loss_sum": 4.0, "answer_tokens": 4}]
    metrics, details = task_metrics("summarization", records, None)  # any kind without candidates
    assert metrics["loss"] == 0.75 and metrics["perplexity"] == pytest.approx(math.exp(0.75))
    assert metrics["gen_rows"] == 1.0 and metrics["rougeL"] == 1.0  # only the generated row counts
    assert details == {}
