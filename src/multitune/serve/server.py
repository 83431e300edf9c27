"""`multitune serve`: an OpenAI-compatible HTTP server on the standard library, for trials on CPU or GPU.

Endpoints: `POST /v1/chat/completions` (streamed as server-sent events when `stream` is true),
`GET /v1/models`, `GET /health`. Requests are handled on threads; generation itself runs one at a time
(`ChatModel` holds a lock). With an API key (`MULTITUNE_API_KEY`), every `/v1` request needs
`Authorization: Bearer <key>`. For production traffic serve the adapter or merged model with vLLM
(docs/deploy.md).
"""

from __future__ import annotations

import hmac
import json
import sys
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from multitune.errors import UserError
from multitune.serve import protocol
from multitune.serve.engine import ChatModel, PromptTooLong
from multitune.serve.protocol import ApiError

MAX_BODY_BYTES = 4 << 20


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung client never keeps the process alive on shutdown

    def __init__(self, address: tuple[str, int], chat_model: ChatModel, api_key: str | None = None,
                 default_max_tokens: int = 512):
        super().__init__(address, _Handler)
        self.chat_model = chat_model
        self.api_key = api_key
        self.default_max_tokens = default_max_tokens
        self.created = int(time.time())

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: ChatServer
    protocol_version = "HTTP/1.1"  # keep-alive for JSON answers; a stream closes its connection at the end

    def do_GET(self) -> None:  # noqa: N802 (the standard library's naming)
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        routes = {"/v1/chat/completions": ("POST", self._chat), "/v1/models": ("GET", self._models),
                  "/health": ("GET", self._health)}
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path not in routes:
                raise ApiError(404, f"Unknown request URL: {method} {self.path}.", code="unknown_url")
            allowed, handler = routes[path]
            if method != allowed:
                raise ApiError(405, f"Method {method} is not allowed for {path}; use {allowed}.",
                               code="method_not_allowed")
            if path.startswith("/v1"):
                self._authorise()
            handler()
        except ApiError as e:
            self._send_json(e.status, e.body())
        except Exception:  # a bug: the client gets a 500, the console the traceback
            traceback.print_exc(file=sys.stderr)
            self._send_json(500, ApiError(500, "The server had an error while processing your request.",
                                          type_="server_error").body())

    def _authorise(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                           code="invalid_api_key")

    def _health(self) -> None:
        self._send_json(200, {"status": "ok"})

    def _models(self) -> None:
        self._send_json(200, protocol.models_body(self.server.chat_model.name, self.server.created))

    def _chat(self) -> None:
        request = protocol.parse_request(self._read_json())
        model = self.server.chat_model
        if request.model != model.name:
            raise ApiError(404, f"The model `{request.model}` does not exist; this server serves `{model.name}`.",
                           "model", "model_not_found")
        messages = [m.as_message() for m in request.messages]
        settings = request.settings(self.server.default_max_tokens)
        try:
            model.encode(messages)  # refuse a bad prompt with a 400 before a stream has begun
        except PromptTooLong as e:
            raise ApiError(400, e.what, "messages", "context_length_exceeded") from None
        except UserError as e:
            raise ApiError(400, e.what, "messages") from None
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            self._stream(messages, settings, include_usage)
        else:
            completion = model.complete(messages, settings)
            self._send_json(200, protocol.completion_body(protocol.new_id(), model.name, completion))

    def _stream(self, messages: list[dict[str, str]], settings: Any, include_usage: bool) -> None:
        """Server-sent events: a role chunk, content chunks as tokens decode, a finish chunk, optionally a
        usage chunk, then `[DONE]`. A client that hangs up stops the generation."""
        model, cid = self.server.chat_model, protocol.new_id()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._event(protocol.chunk(cid, model.name, {"role": "assistant", "content": ""}, None, include_usage))
        try:
            completion = model.stream(messages, settings, on_text=lambda text: self._event(
                protocol.chunk(cid, model.name, {"content": text}, None, include_usage)))
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception:  # headers are gone: report in the stream, as OpenAI does
            traceback.print_exc(file=sys.stderr)
            self._event(ApiError(500, "The server had an error while generating.", type_="server_error").body())
            return
        self._event(protocol.chunk(cid, model.name, {}, completion.finish_reason, include_usage))
        if include_usage:
            self._event(protocol.usage_chunk(cid, model.name, completion))
        self._write(b"data: [DONE]\n\n")

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "Send the request body with a Content-Length header.") from None
        if length > MAX_BODY_BYTES:
            raise ApiError(413, f"The request body is over {MAX_BODY_BYTES} bytes.")
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "We could not parse the JSON body of your request: send valid JSON.",
                           code="invalid_json") from None

    def _event(self, body: dict[str, Any]) -> None:
        self._write(b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n")

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status >= 400:  # the request body may be unread: the connection cannot carry another request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the standard library's signature)
        # One line per request, without headers (they may carry the API key).
        sys.stderr.write(f"{self.address_string()} - {format % args}\n")
