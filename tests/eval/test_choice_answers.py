"""Multiple choice answered with the choice's text (`answer_format: text`): scored over the row's texts."""

import pytest

from multitune.config import validate
from multitune.data.prepare import load_splits
from multitune.eval.runner import build_eval_sets, evaluate


def test_text_answers_are_scored_over_the_choice_texts_and_generations_read_as_texts(model, tokenizer):
    cfg = validate({"tasks": [{"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 40,
                               "answer_format": "text"}],
                    "eval": {"choice_texts": True, "micro_batch_size": 4, "generate_max_rows": 4}})
    splits = load_splits(cfg)
    sets = build_eval_sets(tokenizer, splits, cfg.data.max_seq_len, cfg.data.truncation)
    result = evaluate(model, tokenizer, sets, cfg.eval, tokenizer.pad_token_id, generate=True)["quiz"]
    # The candidates are the choice texts, so scoring them is what eval.choice_texts computes (acc).
    assert result.metrics["accuracy"] == pytest.approx(result.metrics["choice_acc"])
    for rec, ex in zip(result.predictions, splits[0].val, strict=True):
        assert rec["gold"] == ex.label in ex.choice_texts and rec["prediction"] in ex.choice_texts
        if "generated" in rec:
            assert rec["generated_label"] in (*ex.choice_texts, None)
