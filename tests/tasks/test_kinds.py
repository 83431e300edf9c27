"""Each task kind: defaults, column mapping, prompt overrides, and one clear message per bad row."""

import datasets
import pytest

from multitune import tasks
from multitune.config import validate
from multitune.errors import UserError
from multitune.tasks.base import EmptyText


def task(**keys):
    return validate({"tasks": [{"name": "t", **keys}]}).tasks[0]


def rows(**columns):
    return datasets.Dataset.from_dict(columns)


def render(cfg, data, **kw):
    return tasks.render(cfg, data, **kw)


# --- classification -----------------------------------------------------------------------------

# A small CSV in the shape sibling datasets of infinite-dataset-hub/TextClaimsDataset use (idx,text,label,
# string labels). SYNTHETIC: written for this test, not taken from that dataset, whose columns are unconfirmed.
TEXT_CLAIMS_SHAPED_CSV = """idx,text,label
0,"Hail cracked my windscreen yesterday, I want to claim.",Claim
1,Can I change the date of my direct debit?,Not a Claim
2,"A burst pipe flooded the kitchen, please open a claim.",Claim
3,When does my policy renew?,Not a Claim
"""


def test_text_claims_shaped_csv_with_string_labels(tmp_path):
    from multitune.data.sources import load_rows

    path = tmp_path / "text_claims_synthetic.csv"
    path.write_text(TEXT_CLAIMS_SHAPED_CSV)
    cfg = task(kind="classification", source=str(path))
    out = render(cfg, load_rows(cfg)).examples
    assert [e.label for e in out] == ["Claim", "Not a Claim", "Claim", "Not a Claim"]
    assert out[0].candidates == ("Claim", "Not a Claim")  # sorted distinct strings
    assert out[0].messages[1]["content"] == (
        "Labels: Claim, Not a Claim\n\nText: Hail cracked my windscreen yesterday, I want to claim.")
    assert out[0].messages[0]["content"] == "Classify the user's text. Reply with the label only."


def test_class_label_ids_read_as_names_in_feature_order():
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["zeta", "Alpha", "mid?"])})
    data = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [2, 0, 1]}, features=features)
    out = render(task(kind="classification", source="x"), data).examples
    assert [e.label for e in out] == ["mid?", "zeta", "Alpha"]
    assert out[0].candidates == ("zeta", "Alpha", "mid?")


def test_labels_from_config_and_descriptions():
    cfg = task(kind="classification", source="x", labels=["no", "yes"],
               label_descriptions={"yes": "the text reports a loss"})
    out = render(cfg, rows(text=["t"], label=["yes"])).examples
    assert out[0].candidates == ("no", "yes")
    assert out[0].messages[1]["content"] == "Labels: \n- no\n- yes: the text reports a loss\n\nText: t"


def test_integer_labels_without_names_sort_numerically():
    out = render(task(kind="classification", source="x"), rows(text=list("abc"), label=[10, 2, 1])).examples
    assert out[0].candidates == ("1", "2", "10") and [e.label for e in out] == ["10", "2", "1"]


def test_unknown_labels_are_all_listed_at_once():
    cfg = task(kind="classification", source="x", labels=["a", "b"])
    with pytest.raises(UserError) as e:
        render(cfg, rows(text=list("wxyz"), label=["a", "c", "d", "c"]))
    assert "2 label(s)" in e.value.what and "'c' (2 rows)" in e.value.what and "'d' (1 rows)" in e.value.what
    assert "first rows: 1, 2, 3" in e.value.what and "tasks.t.labels" in e.value.fix


def test_description_for_a_label_that_does_not_exist():
    cfg = task(kind="classification", source="x", labels=["a", "b"], label_descriptions={"c": "?"})
    with pytest.raises(UserError, match="label_descriptions names labels that are not in the label set: c"):
        render(cfg, rows(text=["t"], label=["a"]))


def test_missing_column_lists_the_columns_and_the_key_to_set():
    with pytest.raises(UserError) as e:
        render(task(kind="classification", source="x"), rows(sentence=["a"], category=["b"]))
    assert "column 'text' (from `text_column`) is not in the data" in e.value.what
    assert "Columns present: 'sentence', 'category'" in e.value.what
    assert "set tasks.t.text_column=" in e.value.fix and "set tasks.t.label_column=" in e.value.fix


def test_a_number_where_text_was_expected():
    with pytest.raises(UserError, match="column 'text' should hold text but holds a int") as e:
        render(task(kind="classification", source="x"), rows(text=[5, 6], label=["a", "b"]))
    assert e.value.where == "task t, row 0"


def test_empty_texts_are_dropped_and_counted_or_refused():
    data = rows(text=["fine", "  ", None, "ok"], label=["a", "b", "a", "b"])
    cfg = task(kind="classification", source="x")
    out = render(cfg, data, empty="drop")
    assert [e.row for e in out.examples] == [0, 3] and out.empty_rows == [1, 2]
    with pytest.raises(EmptyText, match="column 'text' is empty") as e:
        render(cfg, data, empty="error")
    assert e.value.where == "task t, row 1" and "data.empty_text=drop" in e.value.fix


def test_unlabelled_rows_are_refused_all_at_once():
    data = rows(text=["a", "b", "c"], label=["x", "", None])
    with pytest.raises(UserError, match=r"2 of 3 rows have no answer \(column 'label' is empty\): rows 1, 2"):
        render(task(kind="classification", source="x", labels=["x", "y"]), data)


# --- multiple choice ------------------------------------------------------------------------------

CHOICES = {"label": ["A", "B", "C"], "text": ["red", "green", "blue"]}


def test_multiple_choice_renders_lettered_choices():
    out = render(task(kind="multiple_choice", source="x"),
                 rows(question=["Which is the sky?"], choices=[CHOICES], answerKey=["C"])).examples
    assert out[0].messages[1]["content"] == "Which is the sky?\n\nA. red\nB. green\nC. blue"
    assert out[0].answer == "C" and out[0].candidates == ("A", "B", "C")


def test_multiple_choice_can_answer_with_the_choice_text():
    cfg = task(kind="multiple_choice", source="x", answer_format="text")
    (ex,) = render(cfg, rows(question=["Which is the sky?"], choices=[CHOICES], answerKey=["C"])).examples
    assert ex.messages[1]["content"] == "Which is the sky?\n\nA. red\nB. green\nC. blue"  # the same prompt
    assert "with the text of the correct choice" in ex.messages[0]["content"]
    assert ex.answer == ex.label == "blue" and ex.candidates == ex.choice_texts == ("red", "green", "blue")
    (unlabelled,) = render(cfg, rows(question=["q"], choices=[CHOICES]), labelled=False).examples
    assert unlabelled.candidates == ("red", "green", "blue") and unlabelled.label is None


def test_multiple_choice_refuses_the_unlabelled_test_split():
    data = rows(question=["q1", "q2"], choices=[CHOICES, CHOICES], answerKey=["", ""])
    with pytest.raises(UserError, match="2 of 2 rows have no answer") as e:
        render(task(kind="multiple_choice", source="x"), data)
    assert "test split of commonsense_qa has no answers" in e.value.fix


def test_multiple_choice_answer_outside_the_choices():
    data = rows(question=["q"], choices=[CHOICES], answerKey=["E"])
    with pytest.raises(UserError, match=r"answer 'E' is not one of the choices \['A', 'B', 'C'\]"):
        render(task(kind="multiple_choice", source="x"), data)


# --- instruction, summarization, chat ------------------------------------------------------------


def test_instruction_with_and_without_input():
    data = rows(instruction=["Reverse.", "Say hi."], input=["a b", None], output=["b a", "hi"])
    out = render(task(kind="instruction", source="x"), data).examples
    assert [e.messages[1]["content"] for e in out] == ["Reverse.\n\na b", "Say hi."]
    assert [e.answer for e in out] == ["b a", "hi"]


def test_instruction_with_an_empty_output_is_an_empty_text():
    data = rows(instruction=["Reverse."], input=["a b"], output=[""])
    assert render(task(kind="instruction", source="x"), data, empty="drop").empty_rows == [0]


def test_summarization_maps_its_columns():
    cfg = task(kind="summarization", source="x", source_column="dialogue", target_column="summary")
    out = render(cfg, rows(dialogue=["#Person1#: Hi.\n#Person2#: Hello."], summary=["They greet."])).examples
    assert out[0].messages[0]["content"].startswith("Summarize the text")
    assert out[0].messages[1] == {"role": "user", "content": "#Person1#: Hi.\n#Person2#: Hello."}
    assert out[0].answer == "They greet." and out[0].candidates is None


def test_chat_messages_every_turn_kept_and_trailing_user_turn_left_out():
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"},
            {"role": "user", "content": "(no answer)"}]
    out = render(task(kind="chat", source="x"), rows(messages=[conv])).examples
    assert out[0].messages == tuple(conv[:4])


def test_chat_sharegpt_layout_and_system_prompt():
    conv = [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]
    cfg = task(kind="chat", source="x", messages_column="conversations", system_prompt="Be exact.",
               prompt_template="Q: {content}")
    out = render(cfg, rows(conversations=[conv])).examples
    assert out[0].messages == ({"role": "system", "content": "Be exact."}, {"role": "user", "content": "Q: 2+2?"},
                               {"role": "assistant", "content": "4"})


def test_chat_refuses_unknown_roles_and_counts_conversations_without_answers():
    cfg = task(kind="chat", source="x")
    with pytest.raises(UserError, match="unknown role 'tool'"):
        render(cfg, rows(messages=[[{"role": "tool", "content": "x"}]]))
    only_user = [[{"role": "user", "content": "anyone?"}], [{"role": "user", "content": "a"},
                                                             {"role": "assistant", "content": "b"}]]
    out = render(cfg, rows(messages=only_user), empty="drop")
    assert out.empty_rows == [0] and len(out.examples) == 1
    with pytest.raises(UserError, match="column 'messages' has no assistant turn"):
        render(cfg, rows(messages=only_user))


def test_chat_prediction_asks_for_the_next_answer():
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    out = render(task(kind="chat", source="x"), rows(messages=[conv]), labelled=False).examples
    assert out[0].messages == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""})


# --- overrides shared by every kind ---------------------------------------------------------------


@pytest.mark.parametrize("kind, data", [
    ("classification", {"text": ["t"], "label": ["a"]}),
    ("instruction", {"instruction": ["t"], "output": ["o"]}),
    ("summarization", {"text": ["t"], "summary": ["s"]}),
])
def test_system_prompt_and_template_are_overridable_per_task(kind, data):
    extra = {"labels": ["a", "b"]} if kind == "classification" else {}
    field = {"classification": "text", "instruction": "instruction", "summarization": "source"}[kind]
    cfg = task(kind=kind, source="x", system_prompt="", prompt_template=f">> {{{field}}}", **extra)
    out = render(cfg, rows(**data)).examples
    assert out[0].messages[0] == {"role": "user", "content": ">> t"}  # "" sends no system prompt


def test_a_template_with_a_field_the_kind_does_not_have():
    with pytest.raises(UserError, match=r"unknown field\(s\) \{dialogue\}") as e:
        render(task(kind="summarization", source="x", prompt_template="{dialogue}"), rows(text=["t"], summary=["s"]))
    assert e.value.fix == "use only {source}"
