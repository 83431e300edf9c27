"""From config to tokenised splits: validation splits, label checks, statistics, the tokenised cache."""

import pytest
from data_helpers import run_config, write_jsonl

from multitune.data import cache
from multitune.data.prepare import load_splits, tokenize_splits
from multitune.errors import UserError


def claims_rows(n, labels=("Claim", "Not a Claim")):
    return [{"text": f"message number {i} about {labels[i % len(labels)].lower()}", "label": labels[i % len(labels)]}
            for i in range(n)]


def folder_with_splits(tmp_path, train, validation):
    folder = tmp_path / "claims"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "validation.jsonl", validation)
    return folder


def test_a_named_validation_split_is_used_as_is(tmp_path):
    folder = folder_with_splits(tmp_path, claims_rows(10), claims_rows(4))
    cfg = run_config([{"name": "c", "kind": "classification", "source": str(folder), "val_split": "validation"}])
    (split,) = load_splits(cfg)
    assert len(split.train) == 10 and len(split.val) == 4 and split.val_rows == 4
    assert [e.row for e in split.val] == [0, 1, 2, 3]
    assert split.val[0].candidates == ("Claim", "Not a Claim")


def test_a_validation_label_training_never_saw(tmp_path):
    folder = folder_with_splits(tmp_path, claims_rows(10), claims_rows(6, labels=("Claim", "Fraud", "Not a Claim")))
    cfg = run_config([{"name": "c", "kind": "classification", "source": str(folder), "val_split": "validation"}])
    with pytest.raises(UserError) as e:
        load_splits(cfg)
    assert "label(s) in the validation split 'validation' never occur in training: 'Fraud' (2 rows)" in e.value.what
    assert "validation rows 1, 4" in e.value.what and e.value.where == "task c"


def test_val_split_must_differ_from_the_training_split():
    with pytest.raises(UserError, match="val_split 'train' is the training split"):
        run_config([{"name": "c", "kind": "classification", "source": "x.csv", "val_split": "train"}])


def test_every_label_keeps_a_training_row_whatever_the_fraction(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", claims_rows(4))  # 2 rows per label, 90% held out
    (split,) = load_splits(run_config([{"name": "c", "kind": "classification", "source": str(path)}],
                                      data={"val_fraction": 0.9}))
    assert sorted(e.label for e in split.train) == ["Claim", "Not a Claim"] and len(split.val) == 2


def test_stats_count_every_dropped_row_and_say_why(tmp_path, tokenizer):
    rows = claims_rows(20)
    rows[3]["text"] = ""
    rows[5]["text"] = "word " * 400  # over max_seq_len, dropped by the policy
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = run_config([{"name": "c", "kind": "classification", "source": str(path)}],
                     data={"max_seq_len": 160, "truncation": "drop", "val_fraction": 0.25})
    prepared = tokenize_splits(tokenizer, load_splits(cfg), cfg)
    s = prepared.stats["c"]
    assert s["empty_rows_dropped"] == 1 and s["rows"] == 20
    assert s["train"]["dropped_too_long"] + s["val"]["dropped_too_long"] == 1
    assert s["train"]["examples"] + s["val"]["examples"] == 18
    assert s["labels"] == ["Claim", "Not a Claim"] and s["kind"] == "classification" and s["weight"] == 1.0
    assert s["epoch"]["examples"] == s["train"]["examples"] == prepared.task_sizes[0]
    assert s["epoch"]["tokens"] == sum(prepared.lengths)
    strict = run_config([{"name": "c", "kind": "classification", "source": str(path)}], data={"empty_text": "error"})
    with pytest.raises(UserError, match="column 'text' is empty"):
        load_splits(strict)


def test_mixture_counts_reach_the_stats(tmp_path, tokenizer):
    big = write_jsonl(tmp_path / "big.jsonl", claims_rows(50))
    small = write_jsonl(tmp_path / "small.jsonl", claims_rows(10))
    cfg = run_config([{"name": "big", "kind": "classification", "source": str(big)},
                      {"name": "small", "kind": "classification", "source": str(small), "max_examples_per_epoch": 20}],
                     data={"mixture": {"strategy": "equal"}})
    prepared = tokenize_splits(tokenizer, load_splits(cfg), cfg)
    assert prepared.task_sizes == [40, 8]
    assert prepared.epoch_counts == (24, 20)  # equal halves of 48, then the cap
    assert prepared.stats["small"]["epoch"]["share"] == round(20 / 44, 4)


def test_a_second_run_reads_the_tokens_from_the_cache(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("MULTITUNE_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(tmp_path / "rows.jsonl", claims_rows(30))
    raw = [{"name": "c", "kind": "classification", "source": str(path)}]
    cfg = run_config(raw)
    first = tokenize_splits(tokenizer, load_splits(cfg), cfg)
    assert first.stats["c"]["tokenize_cache"] == "miss"

    calls = []
    real = cache.tokenize_one
    monkeypatch.setattr(cache, "tokenize_one", lambda *a: calls.append(1) or real(*a))
    second = tokenize_splits(tokenizer, load_splits(cfg), cfg)
    assert calls == [] and second.stats["c"]["tokenize_cache"] == "hit"
    assert [t.input_ids for t in second.train] == [t.input_ids for t in first.train]
    assert [t.labels for t in second.train] == [t.labels for t in first.train]
    assert second.stats == first.stats | {"c": {**first.stats["c"], "tokenize_cache": "hit"}}

    # Any change to what the tokens depend on misses: the template, the data, the tokenizer, the length.
    templated = run_config([{**raw[0], "prompt_template": "Message: {text}"}])
    assert tokenize_splits(tokenizer, load_splits(templated), templated).stats["c"]["tokenize_cache"] == "miss"
    write_jsonl(path, claims_rows(31))
    assert tokenize_splits(tokenizer, load_splits(cfg), cfg).stats["c"]["tokenize_cache"] == "miss"
    other = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    other.chat_template = tokenizer.chat_template.replace("<|eot_id|>", "<|end_of_text|>")
    assert tokenize_splits(other, load_splits(cfg), cfg).stats["c"]["tokenize_cache"] == "miss"
    shorter = run_config(raw, data={"max_seq_len": 20})
    assert tokenize_splits(tokenizer, load_splits(shorter), shorter).stats["c"]["tokenize_cache"] == "miss"
