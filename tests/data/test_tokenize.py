import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multitune.data.tokenize import (
    IGNORE,
    Tokenized,
    answer_ids,
    encode_segments,
    fit_length,
    prompt_ids,
    segments,
    tokenize_examples,
)
from multitune.errors import UserError
from multitune.tasks.base import Example, chat


def decode_trained(tokenizer, tok: Tokenized) -> str:
    return tokenizer.decode([i for i, lab in zip(tok.input_ids, tok.labels, strict=True) if lab != IGNORE])


def test_only_the_answer_and_its_end_of_turn_are_trained(tokenizer):
    messages = chat("Be brief.", "Is this a claim? My car was hit.", "Claim")
    tok = encode_segments(tokenizer, segments(tokenizer, messages), task_id=3)
    assert decode_trained(tokenizer, tok) == "Claim<|eot_id|>"
    assert tok.task_id == 3
    # Every position is either its own id (trained) or IGNORE, and the ids render the template exactly.
    assert all(lab in (IGNORE, i) for i, lab in zip(tok.input_ids, tok.labels, strict=True))
    assert tokenizer.decode(tok.input_ids) == tokenizer.apply_chat_template(list(messages), tokenize=False)


def test_every_assistant_turn_of_a_conversation_is_trained(tokenizer):
    messages = [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye"},
    ]
    tok = encode_segments(tokenizer, segments(tokenizer, messages), task_id=0)
    assert decode_trained(tokenizer, tok) == "Hello there<|eot_id|>Goodbye<|eot_id|>"


def test_prompt_and_answer_ids_concatenate_to_the_training_encoding(tokenizer):
    messages = chat("sys", "Which is a fruit?", "B")
    tok = encode_segments(tokenizer, segments(tokenizer, messages), task_id=0)
    assert prompt_ids(tokenizer, messages[:-1]) + answer_ids(tokenizer, messages[:-1], "B") == tok.input_ids


def test_truncate_cuts_the_prompt_from_the_left_and_keeps_the_answer():
    tok = Tokenized(input_ids=[1, 2, 3, 4, 5, 6, 7], labels=[IGNORE] * 5 + [6, 7], task_id=0)
    cut = fit_length(tok, max_seq_len=5, policy="truncate", where="t")
    assert cut is not None
    assert cut.input_ids == [1, 4, 5, 6, 7]  # begin-of-text kept, then the newest prompt tokens
    assert cut.labels == [IGNORE, IGNORE, IGNORE, 6, 7]


def test_truncate_drops_an_example_whose_answer_cannot_fit():
    tok = Tokenized(input_ids=[1, 2, 3, 4, 5], labels=[IGNORE, IGNORE, 3, 4, 5], task_id=0)
    assert fit_length(tok, max_seq_len=3, policy="truncate", where="t") is None


def test_drop_and_error_policies():
    tok = Tokenized(input_ids=[1, 2, 3, 4], labels=[IGNORE, IGNORE, 3, 4], task_id=0)
    assert fit_length(tok, 3, "drop", "t") is None
    assert fit_length(tok, 4, "error", "t") is tok
    with pytest.raises(UserError, match="over data.max_seq_len=3"):
        fit_length(tok, 3, "error", "task x, row 7")


def test_tokenize_examples_counts_what_it_drops_and_truncates(tokenizer):
    short = Example("t", 0, chat(None, "hi", "ok"))
    long = Example("t", 1, chat(None, "word " * 200, "ok"))
    out, stats = tokenize_examples(tokenizer, [short, long], task_id=0, max_seq_len=40, policy="truncate")
    assert len(out) == 2 and stats.truncated == 1 and stats.dropped_too_long == 0
    assert all(len(t.input_ids) <= 40 for t in out)
    assert decode_trained(tokenizer, out[1]) == "ok<|eot_id|>"
    out, stats = tokenize_examples(tokenizer, [short, long], task_id=0, max_seq_len=40, policy="drop")
    assert len(out) == 1 and stats.dropped_too_long == 1
    assert stats.answer_tokens == out[0].n_answer_tokens


def test_a_template_that_is_not_incremental_is_refused(tokenizer):
    class Rewrites:
        name_or_path = "weird"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt=False):
            # Renders the last message first: no rendering is a prefix of the next one.
            return "|".join(m["content"] for m in reversed(messages)) + ("|gen" if add_generation_prompt else "")

    with pytest.raises(UserError, match="prefixes"):
        segments(Rewrites(), chat(None, "a", "b"))


# --- properties (hypothesis) ----------------------------------------------------------------------

# Letters, digits, punctuation, spaces, newlines and some non-ASCII: what real rows hold.
TEXT = st.text(st.sampled_from(list("abcxyz ABC019.,:;!?'\"-()\n\t") + ["é", "ß", "中", "😀"]), min_size=1,
               max_size=40).filter(lambda s: s.strip())
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(system=st.none() | TEXT, user=TEXT, answer=TEXT)
def test_masking_trains_exactly_the_answer_whatever_the_text(tokenizer, system, user, answer):
    messages = chat(system, user, answer)
    tok = encode_segments(tokenizer, segments(tokenizer, messages), task_id=0)
    assert len(tok.labels) == len(tok.input_ids)
    assert all(lab in (IGNORE, i) for i, lab in zip(tok.input_ids, tok.labels, strict=True))
    trained = [i for i, lab in enumerate(tok.labels) if lab != IGNORE]
    assert trained == list(range(trained[0], len(tok.labels)))  # one run, at the end
    assert decode_trained(tokenizer, tok) == answer.strip() + "<|eot_id|>"  # the template trims contents
    assert tokenizer.decode(tok.input_ids) == tokenizer.apply_chat_template(list(messages), tokenize=False)
    assert prompt_ids(tokenizer, messages[:-1]) + answer_ids(tokenizer, messages[:-1], answer) == tok.input_ids


example_tokens = st.builds(
    lambda prompt, answer: Tokenized(prompt + answer, [IGNORE] * len(prompt) + answer, 0),
    st.lists(st.integers(1, 50), min_size=1, max_size=40), st.lists(st.integers(51, 99), min_size=1, max_size=10),
)


@settings(max_examples=300, deadline=None)
@given(tok=example_tokens, max_seq_len=st.integers(2, 60), policy=st.sampled_from(["truncate", "drop"]))
def test_length_policies_never_cut_the_answer(tok, max_seq_len, policy):
    fitted = fit_length(tok, max_seq_len, policy, where="t")
    answer = [x for x in tok.labels if x != IGNORE]
    if len(tok.input_ids) <= max_seq_len:
        assert fitted is tok
    elif policy == "drop" or len(answer) + 1 > max_seq_len:
        assert fitted is None
    else:
        assert fitted is not None and len(fitted.input_ids) == max_seq_len
        assert fitted.input_ids[0] == tok.input_ids[0]  # begin-of-text stays
        assert fitted.input_ids[-len(answer):] == answer and [x for x in fitted.labels if x != IGNORE] == answer
        assert fitted.input_ids[1:] == tok.input_ids[len(tok.input_ids) - max_seq_len + 1:]  # newest prompt kept
