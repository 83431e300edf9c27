"""The reference datasets in ../shared/data, read as the Hub lays them out. Skipped where they are absent."""

import json

import pytest
from data_helpers import shared_data, task

from multitune import tasks
from multitune.data.sources import load_rows


@pytest.fixture(scope="module")
def banking77():
    root = shared_data() / "banking77"
    cfg = task(name="banking77", kind="classification", source=str(root / "train.parquet"))
    return root, tasks.render(cfg, load_rows(cfg)).examples


def test_banking77_parquet_keeps_its_77_names_in_order(banking77):
    root, examples = banking77
    names = list(examples[0].candidates)
    assert len(names) == 77 and len(examples) == 10003
    assert names[:2] == ["activate_my_card", "age_limit"] and names[-1] == "wrong_exchange_rate_for_cash_withdrawal"
    assert names == sorted(names, key=str.lower)  # the Hub's order
    assert {"Refund_not_showing_up", "reverted_card_payment?"} <= set(names)  # odd names kept as they are
    assert set(names) == set(json.loads((root / "categories.json").read_text()))
    assert examples[0].messages[1]["content"] == "Text: I am still waiting on my card?"  # 77 labels: not listed
    assert examples[0].answer == "card_arrival"


def test_banking77_csv_layout_gives_the_same_labels(banking77):
    root, from_parquet = banking77
    cfg = task(name="banking77", kind="classification", source=str(root / "train.csv"), label_column="category")
    from_csv = tasks.render(cfg, load_rows(cfg)).examples
    assert from_csv[0].candidates == from_parquet[0].candidates
    by_text = {e.messages[1]["content"]: e.label for e in from_parquet}
    assert all(by_text.get(e.messages[1]["content"], e.label) == e.label for e in from_csv)


def test_commonsense_qa_renders_five_choices_and_the_right_letter():
    path = shared_data() / "commonsense_qa" / "train.jsonl"
    cfg = task(name="csqa", kind="multiple_choice", source=str(path))
    examples = tasks.render(cfg, load_rows(cfg)).examples
    raw = [json.loads(line) for line in path.read_text().splitlines()[:50]]
    assert len(examples) == 9741 and all(e.candidates == ("A", "B", "C", "D", "E") for e in examples)
    assert [e.answer for e in examples[:50]] == [r["answerKey"] for r in raw]
    assert examples[0].messages[1]["content"] == (
        "The sanctions against the school were a punishing blow, and they seemed to what the efforts the school "
        "had made to change?\n\nA. ignore\nB. enforce\nC. authoritarian\nD. yell at\nE. avoid")


def test_dialogsum_renders_as_summarization():
    path = shared_data() / "dialogsum" / "dev.jsonl"
    cfg = task(name="dialogsum", kind="summarization", source=str(path), source_column="dialogue",
               target_column="summary")
    examples = tasks.render(cfg, load_rows(cfg)).examples
    first = json.loads(path.read_text().splitlines()[0])
    assert len(examples) == 500
    assert examples[0].messages[1]["content"] == first["dialogue"]
    assert examples[0].answer == first["summary"] and examples[0].candidates is None
