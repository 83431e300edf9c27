"""One trained chat model behind a lock: render a conversation, generate (greedy or sampled), stream text.

Both `multitune chat` and `multitune serve` talk to a `ChatModel`. Prompts are encoded with the chat
template exactly as training encoded them (`data.tokenize.prompt_ids`), so the model sees at inference the
token sequence it learned from. One generation runs at a time: this is for trials on one machine; vLLM
serves production traffic (docs/deploy.md).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from multitune.errors import UserError
from multitune.tasks.base import Message


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    """0 decodes greedily (what evaluation and `predict` do); above 0 samples."""
    top_p: float = 1.0
    seed: int | None = None
    """Seeds the sampler for a reproducible sampled answer."""
    stop: tuple[str, ...] = ()
    """Text that ends the answer; it is not part of the answer."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length" (max_new_tokens reached)


class PromptTooLong(UserError):
    """The conversation does not fit in the model's context window."""


@dataclass
class StopTrimmer:
    """Cuts streamed text at the first stop string, holding back just enough text to never emit the start
    of a stop string that has not arrived yet.

    >>> t = StopTrimmer(("END",))
    >>> t.feed("abc E") + t.feed("ND more") + t.finish()
    'abc '
    """

    stops: tuple[str, ...]
    stopped: bool = False
    _held: str = field(default="", repr=False)

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        cut = min((i for i in (text.find(s) for s in self.stops if s) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return text[:cut]
        keep = max((len(s) - 1 for s in self.stops), default=0)
        self._held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep] if keep else text

    def finish(self) -> str:
        rest, self._held = self._held, ""
        return "" if self.stopped else rest


class ChatModel:
    """A model and its tokenizer, ready to answer conversations."""

    def __init__(self, model: Any, tokenizer: Any, name: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_context = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
        self._lock = threading.Lock()

    @classmethod
    def from_run(cls, run_dir: str | Path, name: str | None = None, device: str | None = None) -> ChatModel:
        """Load a finished run (base + adapter, or the fully fine-tuned model), on a GPU when there is one."""
        from multitune.models.trained import load_run

        model, tokenizer, _ = load_run(run_dir)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), tokenizer, name or Path(run_dir).resolve().name)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        """The prompt's token ids, up to and including the assistant header."""
        from multitune.data.tokenize import prompt_ids

        ids = prompt_ids(self.tokenizer, list(messages))
        if len(ids) >= self.max_context:
            raise PromptTooLong(f"the conversation is {len(ids)} tokens; the model's context holds "
                                f"{self.max_context}", fix="shorten the messages or start a new conversation")
        return ids

    def complete(self, messages: Sequence[Message], settings: GenerationSettings) -> Completion:
        return self.stream(messages, settings, on_text=lambda _: None)

    def stream(self, messages: Sequence[Message], settings: GenerationSettings,
               on_text: Callable[[str], None]) -> Completion:
        """Generate an answer, calling `on_text` with each new piece of text as it is decoded. If `on_text`
        raises (a client went away) or the caller is interrupted, generation stops and the error propagates."""
        from transformers import TextIteratorStreamer

        ids = self.encode(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        cancel = threading.Event()
        result: dict[str, Any] = {}
        with self._lock:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)  # under the lock: no other request draws from the RNG
            worker = threading.Thread(target=self._generate, args=(ids, settings, streamer, cancel, result),
                                      daemon=True)
            worker.start()
            trimmer = StopTrimmer(settings.stop)
            try:
                for piece in streamer:
                    if text := trimmer.feed(piece):
                        on_text(text)
                    if trimmer.stopped:
                        cancel.set()
                if text := trimmer.finish():
                    on_text(text)
            finally:
                cancel.set()
                worker.join()
        if "error" in result:
            raise result["error"]
        return self._completion(ids, result["new_ids"], settings, trimmer.stopped)

    def _generate(self, ids: list[int], settings: GenerationSettings, streamer: Any, cancel: threading.Event,
                  result: dict[str, Any]) -> None:
        """Runs in a worker thread; hands back the new token ids, or the error, through `result`."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        device = next(self.model.parameters()).device
        # OpenAI's sampler has no top-k, so neither does this one (top_k=0 turns transformers' default off).
        decoding = ({"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p, "top_k": 0}
                    if settings.temperature > 0 else {"do_sample": False})
        try:
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=torch.tensor([ids], device=device),
                    attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
                    max_new_tokens=min(settings.max_new_tokens, self.max_context - len(ids)),
                    **decoding, pad_token_id=self._pad_id(), streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([Cancelled()]),
                )
            result["new_ids"] = out[0, len(ids):].tolist()
        except BaseException as e:  # the caller re-raises it; the streamer must still be ended
            result["error"] = e
            streamer.end()

    def _completion(self, ids: list[int], new_ids: list[int], settings: GenerationSettings, stopped: bool
                    ) -> Completion:
        text = _cut(self.tokenizer.decode(new_ids, skip_special_tokens=True), settings.stop)
        ended = bool(new_ids) and new_ids[-1] in self._eos_ids()
        limit = min(settings.max_new_tokens, self.max_context - len(ids))
        reason = "length" if not (ended or stopped) and len(new_ids) >= limit else "stop"
        return Completion(text, len(ids), len(new_ids), reason)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        return set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    def _pad_id(self) -> int:
        from multitune.models.load import pad_id

        return pad_id(self.tokenizer)


def _cut(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first stop string."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(cuts)] if cuts else text
