"""The k-shot baseline's prompts: seeded, drawn from training rows only, scored on the row's own answer,
truncated as training truncates, and exactly what `multitune data preview` shows."""

import pytest

from multitune.config import validate
from multitune.data.prepare import load_splits
from multitune.data.shots import draw_shots
from multitune.data.tokenize import IGNORE, last_answer_start
from multitune.eval.runner import build_eval_sets, evaluate, spread
from multitune.eval.shots import build_shot_sets, count_truncated
from multitune.recipes.preview import PLAIN, marked_text, shot_prompt

TASKS = [
    {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 60},
    {"name": "instruct", "kind": "instruction", "source": "demo:instruct", "max_rows": 30},
]


@pytest.fixture(scope="module")
def cfg():
    return validate({"tasks": TASKS, "eval": {"baseline_shots": 3, "micro_batch_size": 4, "max_new_tokens": 4,
                                              "generate_max_rows": 2}})


@pytest.fixture(scope="module")
def splits(cfg):
    return load_splits(cfg)


def test_shots_are_seeded_training_rows_never_validation_rows(splits):
    for split in splits:
        drawn = [ex.row for ex in draw_shots(split.train, 3, 0, split.cfg.name)]
        assert drawn == [ex.row for ex in draw_shots(split.train, 3, 0, split.cfg.name)]  # the seed decides
        assert drawn != [ex.row for ex in draw_shots(split.train, 3, 1, split.cfg.name)]
        assert set(drawn) <= {ex.row for ex in split.train}
        assert not set(drawn) & {ex.row for ex in split.val}


def test_every_row_gets_the_same_shots_as_earlier_turns_and_only_its_own_answer_is_scored(tokenizer, cfg, splits):
    sets = build_shot_sets(tokenizer, splits, 3, cfg.seed, cfg.data.max_seq_len, cfg.data.truncation)
    claims = splits[0]
    shots = draw_shots(claims.train, 3, cfg.seed, "claims")
    val_texts = {ex.prompt[-1]["content"] for ex in claims.val}
    for item, ex in zip(sets[0].items, claims.val, strict=True):
        messages = item.example.messages
        assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 4
        assert messages[1:7] == tuple(m for s in shots for m in s.messages[1:])
        assert messages[-2:] == ex.messages[-2:]
        assert not {m["content"] for m in messages[1:-2] if m["role"] == "user"} & val_texts  # no validation row
        labels = item.tokenized.labels
        start = last_answer_start(labels)
        assert all(x == IGNORE for x in labels[:start]) and item.prompt == item.tokenized.input_ids[:start]
        assert tokenizer.decode([x for x in labels if x != IGNORE]).startswith(ex.answer)


def test_the_k_shot_evaluation_scores_the_baseline_rows_and_counts_cut_prompts(model, tokenizer, cfg, splits):
    short = 120  # the three shots do not fit: the oldest turns are cut, as training cuts prompts
    sets = build_shot_sets(tokenizer, splits, 3, cfg.seed, short, "truncate")
    plain = build_eval_sets(tokenizer, splits, short, "truncate")
    assert sum(it.truncated for it in sets[0].items) > sum(it.truncated for it in plain[0].items)
    few = cfg.eval.model_copy(update={"max_rows": 5})
    results = evaluate(model, tokenizer, sets, few, tokenizer.pad_token_id, generate=False)
    count_truncated(results, sets, 5)
    assert results["claims"].metrics["rows"] == 5.0
    picked = spread(sets[0].items, 5)
    assert [p["index"] for p in results["claims"].predictions] == [it.index for it in picked]
    assert results["claims"].metrics["truncated"] == float(sum(it.truncated for it in picked)) > 0
    assert 0.0 <= results["claims"].metrics["accuracy"] <= 1.0 and results["instruct"].metrics["loss"] > 0


def test_data_preview_shows_the_tokens_the_k_shot_evaluation_scores(tokenizer, cfg, splits):
    sets = build_shot_sets(tokenizer, splits, 3, cfg.seed, cfg.data.max_seq_len, cfg.data.truncation)
    for task_id, es in enumerate(sets):
        shown = shot_prompt(tokenizer, splits, task_id, cfg)
        first = es.items[0]
        assert shown.splitlines()[0].startswith(f"--- 3-shot baseline prompt (eval.baseline_shots), {es.name}, "
                                                f"validation row {first.example.row} after 3 training examples")
        assert marked_text(tokenizer, first.tokenized, PLAIN) in shown
        assert shown.count(PLAIN[0]) == 1  # only the row's own answer is marked as scored


def test_data_preview_shows_an_evaluated_only_task_by_its_validation_rows(tiny_dir):
    from multitune.recipes.preview import preview

    retained = validate({"model": {"name": str(tiny_dir)},
                         "tasks": [TASKS[0], {**TASKS[1], "train": False}], "eval": {"baseline_shots": 1}})
    shown = preview(retained, n=1)
    assert "=== instruct (instruction): 1 of 6 validation (train: false) examples ===" in shown
    assert "=== claims (classification): 1 of 48 training examples ===" in shown
    assert shown.count("1-shot baseline prompt (eval.baseline_shots)") == 2
