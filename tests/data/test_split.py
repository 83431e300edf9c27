from collections import Counter

from multitune.data.split import train_val_split
from multitune.tasks.base import Example


def rows(n, labels="abc"):
    return [Example("t", i, (), label=labels[i % len(labels)]) for i in range(n)]


def test_split_is_disjoint_complete_and_stratified():
    examples = rows(300)
    train, val = train_val_split(examples, 0.2, seed=1)
    assert {e.row for e in train}.isdisjoint({e.row for e in val})
    assert len(train) + len(val) == 300
    assert Counter(e.label for e in val) == {"a": 20, "b": 20, "c": 20}


def test_split_is_the_same_for_the_same_seed_and_differs_for_another():
    a = train_val_split(rows(100), 0.2, seed=7)[1]
    b = train_val_split(rows(100), 0.2, seed=7)[1]
    c = train_val_split(rows(100), 0.2, seed=8)[1]
    assert [e.row for e in a] == [e.row for e in b]
    assert [e.row for e in a] != [e.row for e in c]


def test_pinned_rows_guard_against_a_changed_algorithm():
    # If this changes, every user's validation set changes: bump it only on purpose.
    val = train_val_split(rows(20, labels="x"), 0.2, seed=0)[1]
    assert [e.row for e in val] == [0, 4, 5, 11]


def test_a_label_with_a_single_row_stays_in_training():
    examples = rows(10, labels="a") + [Example("t", 10, (), label="rare")]
    train, val = train_val_split(examples, 0.5, seed=0)
    assert any(e.label == "rare" for e in train) and not any(e.label == "rare" for e in val)


def test_both_multiple_choice_answer_formats_hold_out_the_same_rows():
    from data_helpers import run_config

    from multitune.data.prepare import load_splits

    quiz = {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 60}
    (letters,) = load_splits(run_config([quiz]))
    (texts,) = load_splits(run_config([{**quiz, "answer_format": "text"}]))
    assert [ex.row for ex in texts.val] == [ex.row for ex in letters.val] and len(texts.val) == 12
    assert all(t.label == t.choice_texts[t.candidates.index(t.label)] and t.stratum == lt.label
               for t, lt in zip(texts.val, letters.val, strict=True))
