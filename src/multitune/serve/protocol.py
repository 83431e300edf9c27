"""The OpenAI chat-completions protocol: request validation, response and stream-chunk shapes, errors.

Requests are checked the way OpenAI checks them: an unknown argument is refused ("Unrecognized request
argument supplied"), a known one this server cannot honour (n > 1, tools, logprobs) is refused by name
rather than silently ignored, and every error has OpenAI's JSON shape
`{"error": {"message", "type", "param", "code"}}` so clients show it as they show OpenAI's own.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from multitune.serve.engine import Completion, GenerationSettings


class ApiError(Exception):
    """An error to send back as JSON with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_message(self) -> dict[str, str]:
        """The message as the chat template wants it: OpenAI's `developer` is a system prompt."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Known arguments accepted only at the value that asks for nothing this server lacks.
    n: Literal[1] | None = None
    frequency_penalty: Literal[0] | None = None
    presence_penalty: Literal[0] | None = None
    logprobs: Literal[False] | None = None
    # Bookkeeping arguments that do not change the answer.
    user: str | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else v or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 non-empty stop sequences")
        return v

    def settings(self, default_max_tokens: int) -> GenerationSettings:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerationSettings(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,  # OpenAI's default
            top_p=1.0 if self.top_p is None else self.top_p, seed=self.seed, stop=stop,
        )


def parse_request(body: Any) -> ChatRequest:
    """Validate a decoded JSON body; a problem becomes a 400 naming the parameter."""
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    try:
        return ChatRequest.model_validate(body)
    except ValidationError as e:
        # The deepest problem is the telling one: a list given as `content` fails the string branch at
        # `content` and the list branch at the part that is wrong; the latter says what to fix.
        raise _as_api_error(max(e.errors(), key=lambda err: len(err["loc"]))) from None


def _as_api_error(err: dict[str, Any]) -> ApiError:
    loc = tuple(err["loc"])
    if err["type"] == "extra_forbidden":  # the unknown name is the last part of the location
        param = ".".join(p for p in (_param(loc[:-1]), str(loc[-1])) if p)
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param, "unrecognized_argument")
    param = _param(loc)
    if err["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    msg = err["msg"].removeprefix("Value error, ")
    return ApiError(400, f"Invalid value for '{param}': {msg}.", param, "invalid_value")


def _param(loc: tuple[Any, ...]) -> str:
    """('messages', 0, 'content', 'str') -> 'messages[0].content': pydantic puts the names of union
    branches ('str', 'list[TextPart]') in locations; only the request's own field names are kept."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _FIELD_NAMES:
            out += ("." if out else "") + part
    return out


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens}


def completion_body(completion_id: str, model: str, c: Completion) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                     "finish_reason": c.finish_reason, "logprobs": None}],
        "usage": usage(c), "system_fingerprint": None,
    }


def chunk(completion_id: str, model: str, delta: dict[str, str], finish_reason: str | None = None,
          with_usage_field: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        "system_fingerprint": None,
    }
    if with_usage_field:  # OpenAI sends "usage": null on every chunk but the last when usage is asked for
        body["usage"] = None
    return body


def usage_chunk(completion_id: str, model: str, c: Completion) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [], "usage": usage(c), "system_fingerprint": None}


def models_body(model: str, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "multitune"}]}


_FIELD_NAMES = {name for m in (TextPart, ChatMessage, StreamOptions, ChatRequest) for name in m.model_fields}
