"""`multitune chat`: talk to a trained run in the terminal, with the answer streamed as it is generated.

The conversation keeps its history (each answer is conditioned on every earlier turn). Commands:
`/reset` forgets the history, `/system TEXT` sets the system prompt (and resets), `/set NAME VALUE`
changes a generation setting (temperature, top_p, max_new_tokens, seed), `/help`, `/exit` (or Ctrl-D).
Ctrl-C stops an answer being generated and drops that turn. A line ending in `\\` continues on the next
line, for prompts of several lines (the tasks' templates have them).
"""

from __future__ import annotations

import dataclasses
from typing import TextIO

from multitune.errors import UserError
from multitune.serve.engine import ChatModel, GenerationSettings
from multitune.tasks.base import Message

HELP = ("End a line with \\ to go on to the next one. /reset forgets the conversation, /system TEXT sets the "
        "system prompt, /set NAME VALUE changes temperature, top_p, max_new_tokens or seed, /exit quits (or "
        "Ctrl-D); Ctrl-C stops an answer.")
SETTABLE = {"temperature": float, "top_p": float, "max_new_tokens": int, "seed": int}
VALID = {"temperature": lambda v: v >= 0, "top_p": lambda v: 0 < v <= 1, "max_new_tokens": lambda v: v >= 1,
         "seed": lambda v: True}


class TerminalChat:
    """One conversation between a user on `stdin`/`stdout` and a `ChatModel`."""

    def __init__(self, model: ChatModel, settings: GenerationSettings, system_prompt: str | None,
                 stdin: TextIO, stdout: TextIO):
        self.model = model
        self.settings = settings
        self.system_prompt = system_prompt
        self.stdin, self.stdout = stdin, stdout
        self.history: list[Message] = []

    @property
    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return head + self.history

    def run(self) -> None:
        """Read lines until /exit or end of input."""
        self._say(f"chatting with {self.model.name}. {HELP}\n")
        while True:
            self._say("\nyou> ")
            line = self._read_message()
            if line is None:  # end of input
                self._say("\n")
                return
            if line == "/exit":
                return
            if line.startswith("/"):
                self._command(line)
            elif line:
                self._turn(line)

    def _read_message(self) -> str | None:
        """One message: a line, joined with the next ones while it ends in a backslash. None at the end."""
        parts: list[str] = []
        while True:
            line = self.stdin.readline()
            if not line:
                return "\n".join(parts).strip() if parts else None
            line = line.rstrip("\r\n")
            if not line.endswith("\\"):
                return "\n".join([*parts, line]).strip()
            parts.append(line[:-1])
            self._say("...> ")

    def _turn(self, text: str) -> None:
        self.history.append({"role": "user", "content": text})
        self._say("assistant> ")
        try:
            completion = self.model.stream(self.messages, self.settings, on_text=self._say)
        except KeyboardInterrupt:
            self.history.pop()
            self._say("\n[stopped; that turn is forgotten]\n")
            return
        except UserError as e:  # e.g. the conversation outgrew the context window
            self.history.pop()
            self._say(f"\nerror: {e}\n")
            return
        self.history.append({"role": "assistant", "content": completion.text})
        suffix = " [cut at max_new_tokens]" if completion.finish_reason == "length" else ""
        self._say(f"{suffix}\n")

    def _command(self, line: str) -> None:
        name, _, arg = line.partition(" ")
        if name == "/reset":
            self.history.clear()
            self._say("(conversation reset)\n")
        elif name == "/system":
            self.system_prompt = arg.strip() or None
            self.history.clear()
            self._say(f"(system prompt {'set' if self.system_prompt else 'removed'}; conversation reset)\n")
        elif name == "/set":
            self._set(arg)
        elif name == "/help":
            self._say(HELP + "\n")
        else:
            self._say(f"unknown command {name}. {HELP}\n")

    def _set(self, arg: str) -> None:
        key, _, value = arg.strip().partition(" ")
        if key not in SETTABLE:
            self._say(f"usage: /set NAME VALUE, NAME one of {', '.join(SETTABLE)}\n")
            return
        try:
            parsed = SETTABLE[key](value)
        except ValueError:
            parsed = None
        if parsed is None or not VALID[key](parsed):
            self._say(f"{key} cannot be {value!r}: temperature >= 0, 0 < top_p <= 1, max_new_tokens >= 1, "
                      "seed an integer\n")
            return
        self.settings = dataclasses.replace(self.settings, **{key: parsed})
        self._say(f"({key} = {parsed})\n")

    def _say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()
