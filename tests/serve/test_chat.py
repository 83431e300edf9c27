"""`multitune chat`: streamed answers, history, a system prompt, settings, /reset and /exit."""

from __future__ import annotations

import io
import sys

from multitune.cli import main
from multitune.data.tokenize import prompt_ids
from multitune.eval.generate import greedy
from multitune.models import load
from multitune.serve.chat import TerminalChat
from multitune.serve.engine import GenerationSettings

SYSTEM = "Classify the user's text. Reply with the label only."
FIRST = "Labels: Claim, Not a Claim\n\nText: A tree fell on my roof. I want to file a claim."
SECOND = "Labels: Claim, Not a Claim\n\nText: When does my policy renew?"


def _greedy(chat_model, messages, n):
    tok = chat_model.tokenizer
    return greedy(chat_model.model, tok, [prompt_ids(tok, messages)], n, 1, load.pad_id(tok))[0]


def _typed(text):
    """`text` as typed in the chat: every line but the last ends in a backslash."""
    return "\\\n".join(text.split("\n"))


class Recorder(io.StringIO):
    """Keeps every write apart, to see that answers arrive in pieces."""

    def __init__(self):
        super().__init__()
        self.writes: list[str] = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def _chat(chat_model, lines, system=SYSTEM):
    out = Recorder()
    chat = TerminalChat(chat_model, GenerationSettings(max_new_tokens=6), system, io.StringIO(lines), out)
    chat.run()
    chat.writes = out.writes
    return chat, out.getvalue()


def test_answers_stream_with_the_whole_history(chat_model):
    chat, out = _chat(chat_model, f"{_typed(FIRST)}\n{_typed(SECOND)}\n/exit\nnever read\n")
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": FIRST}]
    answer1 = _greedy(chat_model, first, 6)
    assert answer1 and f"assistant> {answer1}" in out
    start = chat.writes.index("assistant> ") + 1
    end = next(i for i in range(start, len(chat.writes)) if chat.writes[i].endswith("\n"))
    streamed = chat.writes[start:end]
    assert "".join(streamed).strip() == answer1 and len(streamed) > 1  # streamed piece by piece
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert chat.history[1]["content"].strip() == answer1
    second = [*first, chat.history[1], {"role": "user", "content": SECOND}]  # conditioned on turn one
    assert chat.history[3]["content"].strip() == _greedy(chat_model, second, 6)
    assert "never read" not in str(chat.history)


def test_reset_system_and_set(chat_model):
    chat, out = _chat(chat_model, f"{_typed(FIRST)}\n/reset\n/system Be brief.\n/set temperature 0.7\n/set top_p 2\n"
                      "/set seed x\n/bogus\n", system=None)
    assert chat.history == [] and chat.system_prompt == "Be brief."
    assert chat.messages == [{"role": "system", "content": "Be brief."}]
    assert chat.settings.temperature == 0.7 and chat.settings.top_p == 1.0
    assert "(conversation reset)" in out and "top_p cannot be '2'" in out and "seed cannot be 'x'" in out
    assert "unknown command /bogus" in out


def test_the_chat_command_reads_stdin_until_end_of_input(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{_typed(FIRST)}\n"))
    assert main(["chat", str(run_dir), "--system", SYSTEM, "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("chatting with run.") and out.count("assistant> ") == 1 and out.count("...> ") == 2
    assert out.rstrip().endswith("you>")
