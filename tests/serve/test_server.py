"""`multitune serve` over loopback with a real HTTP client: answers, streams, and OpenAI-style errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import httpx
import pytest

from multitune.data.tokenize import prompt_ids
from multitune.eval.generate import greedy
from multitune.models import load
from multitune.serve.engine import StopTrimmer
from multitune.serve.server import ChatServer

MESSAGES = [
    {"role": "system", "content": "Classify the user's text. Reply with the label only."},
    {"role": "user", "content": "Labels: Claim, Not a Claim\n\nText: A tree fell on my roof. I want to file a claim."},
]


def _start(chat_model, **kwargs):
    server = ChatServer(("127.0.0.1", 0), chat_model, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def server(chat_model):
    server = _start(chat_model)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def _request(chat_model, **extra):
    return {"model": chat_model.name, "messages": MESSAGES, "temperature": 0, "max_tokens": 8, **extra}


def _greedy_answer(chat_model, messages, max_new_tokens):
    tok = chat_model.tokenizer
    ids = prompt_ids(tok, messages)
    return greedy(chat_model.model, tok, [ids], max_new_tokens, 1, load.pad_id(tok))[0], len(ids)


def test_chat_completion_answers_like_greedy_decoding(client, chat_model):
    r = client.post("/chat/completions", json=_request(chat_model))
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    expected, n_prompt = _greedy_answer(chat_model, MESSAGES, 8)
    assert expected  # the run answers something, so equality means something
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == chat_model.name
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip() == expected
    assert choice["finish_reason"] in {"stop", "length"}
    usage = body["usage"]
    assert usage["prompt_tokens"] == n_prompt
    assert usage["total_tokens"] == n_prompt + usage["completion_tokens"] and 1 <= usage["completion_tokens"] <= 8


def test_streaming_sends_the_same_answer_as_server_sent_events(client, chat_model):
    whole = client.post("/chat/completions", json=_request(chat_model)).json()
    with client.stream("POST", "/chat/completions",
                       json=_request(chat_model, stream=True, stream_options={"include_usage": True})) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "text/event-stream"
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == whole["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_a_stop_string_ends_the_answer_before_it(client, chat_model):
    expected, _ = _greedy_answer(chat_model, MESSAGES, 8)
    words = expected.split()
    assert len(words) > 1
    stop = " " + words[1]
    body = client.post("/chat/completions", json=_request(chat_model, stop=[stop])).json()
    assert body["choices"][0]["message"]["content"].strip() == words[0]
    assert body["choices"][0]["finish_reason"] == "stop"
    with client.stream("POST", "/chat/completions", json=_request(chat_model, stop=stop, stream=True)) as r:
        chunks = [json.loads(x.removeprefix("data: ")) for x in r.iter_lines() if x and x != "data: [DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks).strip() == words[0]


def test_max_tokens_cuts_the_answer_with_finish_reason_length(client, chat_model):
    body = client.post("/chat/completions", json=_request(chat_model, max_tokens=1)).json()
    assert body["usage"]["completion_tokens"] == 1 and body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    (b"{not json", 400, None, "invalid_json"),
    (b"[1, 2]", 400, None, None),
    ({"model": "MODEL"}, 400, "messages", "missing_required_parameter"),
    ({"model": "MODEL", "messages": []}, 400, "messages", "invalid_value"),
    ({"model": "MODEL", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "invalid_value"),
    ({"model": "MODEL", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content[0].type", "invalid_value"),
    ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "temperature",
     "invalid_value"),
    ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n", "invalid_value"),
    ({"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "tools": []}, 400, "tools",
     "unrecognized_argument"),
    ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model", "model_not_found"),
])
def test_bad_requests_get_openai_style_json_errors(client, chat_model, body, status, param, code):
    if isinstance(body, dict):
        body = json.dumps({**body, "model": chat_model.name if body["model"] == "MODEL" else body["model"]}).encode()
    r = client.post("/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param and error["code"] == code


def test_models_unknown_urls_and_methods(client, chat_model):
    models = client.get("/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [chat_model.name]
    assert client.get("/nowhere").status_code == 404
    r = client.get("/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_a_prompt_longer_than_the_context_is_refused(client, chat_model):
    long = " ".join(["claim"] * (chat_model.max_context + 10))
    r = client.post("/chat/completions", json=_request(chat_model, messages=[{"role": "user", "content": long}]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_an_api_key_is_required_when_set(chat_model):
    server = _start(chat_model, api_key="sk-local-test-key")
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.get("/models")
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert c.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/models", headers={"Authorization": "Bearer sk-local-test-key"}).status_code == 200
            assert c.get(server.url.removesuffix("/v1") + "/health").status_code == 200  # no key for probes
    finally:
        server.shutdown()
        server.server_close()


def test_stop_strings_are_cut_even_across_pieces():
    t = StopTrimmer(("END", "###"))
    pieces = [t.feed(p) for p in ["Hello wor", "ld E", "N", "D and more"]]
    assert "".join(pieces) + t.finish() == "Hello world " and t.stopped
    t = StopTrimmer(())
    assert t.feed("abc") == "abc" and t.finish() == ""
    t = StopTrimmer(("xyz",))
    assert t.feed("ab") + t.feed("cx") + t.finish() == "abcx" and not t.stopped


def test_the_serve_command_answers_over_loopback(run_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, ["src", os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "multitune", "serve", str(run_dir), "--port", "0",
                             "--model-name", "tiny-demo"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, line
        url = line.split(" at ")[1].split()[0]
        r = httpx.post(f"{url}/chat/completions", timeout=120, json={
            "model": "tiny-demo", "messages": MESSAGES, "temperature": 0, "max_tokens": 4})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
    finally:
        proc.terminate()
        proc.wait(30)
