"""The evaluation runner on the session's tiny model: losses, predictions and metrics agree exactly."""

import pytest
from sklearn.metrics import accuracy_score, f1_score

from multitune.config import validate
from multitune.config.schema import EvalConfig
from multitune.data.prepare import load_splits
from multitune.data.tokenize import tokenize_examples
from multitune.eval.items import build_eval_set
from multitune.eval.metrics import text_metrics
from multitune.eval.records import SEARCH_FROM_NODES, reference_losses, score_items
from multitune.eval.runner import baseline_config, baseline_notice, build_eval_sets, evaluate, spread
from multitune.tasks.base import Example, chat

TASKS = [
    {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 60},
    {"name": "quiz", "kind": "multiple_choice", "source": "demo:quiz", "max_rows": 30},
    {"name": "instruct", "kind": "instruction", "source": "demo:instruct", "max_rows": 30},
]


@pytest.fixture(scope="module")
def setup(tokenizer):
    cfg = validate({"tasks": TASKS, "eval": {"micro_batch_size": 4, "max_new_tokens": 4, "generate_max_rows": 3,
                                             "choice_texts": True}})
    splits = load_splits(cfg)
    return cfg, splits, build_eval_sets(tokenizer, splits, cfg.data.max_seq_len, cfg.data.truncation)


def test_loss_from_scoring_equals_the_training_loss_on_the_same_rows(model, tokenizer, setup):
    cfg, splits, sets = setup
    results = evaluate(model, tokenizer, sets, cfg.eval, tokenizer.pad_token_id, generate=False)
    for split in splits:
        tok, _ = tokenize_examples(tokenizer, split.val, 0, cfg.data.max_seq_len, cfg.data.truncation)
        sums = reference_losses(model, tok, 4, tokenizer.pad_token_id)
        want = sum(s for s, _ in sums) / sum(n for _, n in sums)
        assert results[split.cfg.name].metrics["loss"] == pytest.approx(want, rel=1e-5), split.cfg.name


def test_metrics_equal_sklearn_on_the_predictions_and_generation_is_capped(model, tokenizer, setup):
    cfg, splits, sets = setup
    results = evaluate(model, tokenizer, sets, cfg.eval, tokenizer.pad_token_id, generate=True)
    claims = results["claims"]
    gold = [p["gold"] for p in claims.predictions]
    pred = [p["prediction"] for p in claims.predictions]
    assert len(claims.predictions) == claims.metrics["rows"] == len(splits[0].val) == 12
    assert [p["row"] for p in claims.predictions] == [ex.row for ex in splits[0].val]
    assert claims.metrics["accuracy"] == accuracy_score(gold, pred)
    assert claims.metrics["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert [p["correct"] for p in claims.predictions] == [g == p for g, p in zip(gold, pred, strict=True)]
    assert [i for i, p in enumerate(claims.predictions) if "generated" in p] == [0, 4, 8]  # spread over 12
    assert claims.metrics["gen_rows"] == 3.0
    assert claims.details["labels"] == ["Claim", "Not a Claim"]
    assert sum(map(sum, claims.details["confusion"])) == 12
    quiz = results["quiz"]
    assert {"choice_acc", "choice_acc_norm", "gen_invalid_rate"} <= quiz.metrics.keys()
    assert all(len(p["choice_scores"]) == len(p["choice_chars"]) == 5 for p in quiz.predictions)
    instruct = results["instruct"]
    generated = [p for p in instruct.predictions if p["prediction"] is not None]
    assert len(generated) == 3 and instruct.metrics["gen_rows"] == 3.0
    want = text_metrics([p["gold"] for p in generated], [p["prediction"] for p in generated])
    assert {k: instruct.metrics[k] for k in want} == pytest.approx(want)


def test_max_rows_limits_every_task(model, tokenizer, setup):
    cfg, _, sets = setup
    small = cfg.eval.model_copy(update={"max_rows": 5})
    results = evaluate(model, tokenizer, sets, small, tokenizer.pad_token_id, generate=False)
    assert {name: r.metrics["rows"] for name, r in results.items()} == {"claims": 5.0, "quiz": 5.0, "instruct": 5.0}


def test_the_smaller_of_max_rows_and_baseline_max_rows_caps_the_baseline():
    caps = {(m, b): baseline_config(EvalConfig(max_rows=m, baseline_max_rows=b)).max_rows
            for m in (None, 3, 8) for b in (None, 5)}
    assert caps == {(None, None): None, (None, 5): 5, (3, None): 3, (3, 5): 3, (8, None): 8, (8, 5): 5}
    assert EvalConfig().baseline_max_rows == 200


def test_the_baseline_evaluates_the_rows_max_rows_spreading_picks_and_says_so(model, tokenizer, setup):
    cfg, splits, sets = setup
    sampled = cfg.eval.model_copy(update={"baseline_max_rows": 5})
    results = evaluate(model, tokenizer, sets[:1], baseline_config(sampled), tokenizer.pad_token_id, generate=False)
    picked = [p["index"] for p in results["claims"].predictions]
    assert picked == [it.index for it in spread(sets[0].items, 5)] == [0, 2, 4, 7, 9]  # 5 of 12, spread
    assert [p["row"] for p in results["claims"].predictions] == [splits[0].val[i].row for i in picked]
    assert results["claims"].metrics["rows"] == 5.0
    assert baseline_notice(sets, sampled) == (
        "baseline: claims on 5 of 12 validation rows, quiz on 5 of 6 validation rows, instruct on 5 of 6 "
        "validation rows, spread evenly (eval.baseline_max_rows: null evaluates all)")
    capped = sampled.model_copy(update={"max_rows": 8})  # the other evaluations take 8 of claims' 12
    assert baseline_notice(sets, capped).endswith("(eval.baseline_max_rows: null evaluates the 8 of eval.max_rows)")
    assert baseline_notice(sets, sampled.model_copy(update={"max_rows": 4})) is None  # max_rows is smaller
    assert baseline_notice(sets, sampled.model_copy(update={"baseline_max_rows": None})) is None
    assert baseline_config(sampled.model_copy(update={"baseline_max_rows": None})).max_rows is None  # every row


def test_search_and_full_scoring_agree_on_a_large_label_set(model, tokenizer):
    labels = [f"{w}_{v}" for w in ("card", "claim", "quote", "renewal", "policy") for v in ("new", "old", "lost",
                                                                                              "late", "fee", "help")]
    texts = ["My car was hit, I want to claim.", "When does my home insurance renew?", "I lost my card.",
             "How much is the fee?", "Please help with my policy.", "Send me a quote."] * 2
    examples = [Example("t", i, chat(None, f"Text: {t}", labels[i]), label=labels[i], candidates=tuple(labels))
                for i, t in enumerate(texts)]
    es = build_eval_set(tokenizer, "t", "classification", examples, 0, 256, "truncate", labels)
    assert len(es.items[0].trie) > SEARCH_FROM_NODES  # the search path is taken
    tries = [it.trie for it in es.items]
    full = dict(score_items(model, es.items, tries, 64, every_candidate=True))
    found = dict(score_items(model, es.items, tries, 64, every_candidate=False))
    assert sorted(full) == sorted(found) == list(range(len(es.items)))
    for k, it in enumerate(es.items):
        f, s = full[k], found[k]
        assert int(s.logprobs.argmax()) == int(f.logprobs.argmax())
        assert s.logprobs[it.gold_index].item() == pytest.approx(f.logprobs[it.gold_index].item(), abs=1e-4)


def test_scores_come_row_by_row_so_nothing_per_row_is_kept(model, tokenizer, setup):
    _, _, sets = setup
    items = sets[0].items  # 12 claims rows; passes of one token hold one row each
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        scores = score_items(model, items, [it.trie for it in items], 1, every_candidate=True)
        first = next(scores)
        assert len(calls) == 2  # only the shared prefix and the first row have run
        rest = list(scores)
    finally:
        handle.remove()
    assert len(calls) == 1 + 12
    assert sorted(k for k, _ in [first, *rest]) == list(range(12))
    assert first[0] == min(range(12), key=lambda k: len(items[k].prompt))
