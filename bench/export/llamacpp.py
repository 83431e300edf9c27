"""Run an exported GGUF in llama.cpp itself and compare it with transformers on the same prompts.

    # once, outside the project's venv (compiles llama.cpp: 42 minutes at nice 19 on the shared 2 cores;
    # or `pip install xllamacpp`, a prebuilt wheel of llama.cpp's server code, into a venv of its own)
    python3 -m venv /work/llamacpp-venv && nice -n 19 /work/llamacpp-venv/bin/pip install llama-cpp-python
    # a finished run, e.g. the quickstart or the tiny demo run this script builds when given none
    OMP_NUM_THREADS=1 python -m bench.export.llamacpp [RUN_DIR] --llamacpp-python /work/llamacpp-venv/bin/python

Two interpreters, because llama-cpp-python is never installed in the project's venv: this script exports
the run (`multitune export --format gguf`, f16 and q8_0), computes transformers' answers with the run
(base + adapter, float32) and writes them to a JSON file, then runs itself under the llama-cpp-python
interpreter (`--llamacpp-side`), which loads each GGUF with llama.cpp (llama-cpp-python if it has it, else
xllamacpp, whose server API gives top-5 log-probs instead of logits) and compares, per prompt:

- tokens: llama.cpp's tokenisation of the rendered chat prompt (special tokens parsed) against the ids
  transformers' tokenizer gives;
- template: llama-cpp-python's rendering of the GGUF's chat template against transformers';
- logits: the largest difference of the next-token logits after the prompt, relative to the largest logit;
- greedy: transformers' greedy answer (token ids, up to `--max-new-tokens` or an end-of-turn token)
  against llama.cpp's, fed the same prompt ids, and how many leading tokens agree;
- chat: the text of llama-cpp-python's `create_chat_completion` (temperature 0; its own template and stop
  handling, as a user would call it) against transformers' decoded answer.

It also writes a small random Llama with Llama 3.1's rope scaling (`rope_freqs`, which transformers' GGUF
reader cannot check) and compares its logits the same way. Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO

PROMPTS = [
    [{"role": "system", "content": "Classify the user's text. Reply with the label only."},
     {"role": "user", "content": "Labels: Claim, Not a Claim\n\nText: A tree fell on my roof last night."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Give the opposite of the word.\n\nhot"}],
    [{"role": "user", "content": "Hello! What can you do?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Summarise in one sentence: the meeting moved from Monday to Thursday, 10:30."}],
]


def main() -> None:
    args = _args()
    if args.llamacpp_side:
        print(json.dumps(llamacpp_side(json.loads(Path(args.llamacpp_side).read_text()))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llamacpp-check-"))
    run_dir = Path(args.run_dir) if args.run_dir else _tiny_run(work)
    cases = transformers_side(run_dir, work, args.types, args.max_new_tokens)
    (work / "cases.json").write_text(json.dumps(cases))
    side = [args.llamacpp_python, "-m", "bench.export.llamacpp", "--llamacpp-side", str(work / "cases.json")]
    done = subprocess.run(side, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the llama.cpp side failed:\n{done.stderr[-3000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    _report(run_dir, results)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", nargs="?", help="a finished run (default: build the tiny demo run in --workdir)")
    p.add_argument("--types", nargs="+", default=["f16", "q8_0"], choices=["f16", "bf16", "q8_0"])
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--workdir", help="where the GGUF files and the comparison go (default: a new temp folder)")
    p.add_argument("--llamacpp-python", default="/work/llamacpp-venv/bin/python",
                   help="an interpreter with llama-cpp-python installed")
    p.add_argument("--llamacpp-side", help=argparse.SUPPRESS)  # internal: the second half, under that interpreter
    return p.parse_args()


# The export tests' demo run (tests/export/finished.py imports it from here; no benchmark imports tests/):
# LoRA on a 2-layer tiny model, a classification and an instruction task, `modules_to_save` like the quickstart
# (trained embeddings and head travel in the GGUF too), a high learning rate so the adapter moves the logits.
TINY_RUN: dict[str, Any] = {
    "model": {"name": "tiny", "tiny": {"vocab_size": 400, "hidden_size": 64, "intermediate_size": 128,
                                       "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "pretrain_steps": 5,
                                       "pretrain_batch_size": 8}},
    "adapter": {"r": 8, "alpha": 16, "dropout": 0.0, "modules_to_save": ["embed_tokens", "lm_head"]},
    "tasks": [
        {"name": "claims", "kind": "classification", "source": "demo:claims", "max_rows": 60},
        {"name": "instruct", "kind": "instruction", "source": "demo:instruct", "max_rows": 30},
    ],
    "data": {"max_seq_len": 128},
    "train": {"max_steps": 6, "micro_batch_size": 8, "learning_rate": 1e-2, "warmup_ratio": 0.0},
    "eval": {"max_rows": 8, "micro_batch_size": 8},
    "logging": {"every_steps": 3},
}


def _tiny_run(work: Path) -> Path:
    """TINY_RUN trained in `work`/tiny-run; its output_dir."""
    from multitune.config import validate
    from multitune.recipes.train import run

    out = work / "tiny-run"
    run(validate({**TINY_RUN, "output_dir": str(out)}))
    return out


def transformers_side(run_dir: Path, work: Path, types: list[str], max_new_tokens: int) -> list[dict]:
    """Export the run in each type and compute transformers' side of every comparison (JSON-ready)."""
    import torch

    from multitune.export.to_gguf import export_gguf
    from multitune.models.trained import load_run

    model, tokenizer, _ = load_run(run_dir)
    stops = _stop_ids(model, tokenizer)
    prompts = [_reference(model, tokenizer, p, stops, max_new_tokens) for p in PROMPTS]
    cases = []
    for type in types:
        path = work / f"{run_dir.name}-{type}.gguf"
        path.unlink(missing_ok=True)
        export_gguf(run_dir, path, type)
        cases.append({"name": f"{run_dir.name} {type}", "gguf": str(path), "prompts": prompts, "stops": stops,
                      "max_new_tokens": max_new_tokens})
    torch.manual_seed(0)
    cases.append(_llama3_rope_case(tokenizer, work, stops))
    return cases


def _stop_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    return sorted({*(eos if isinstance(eos, list) else [eos]), tokenizer.eos_token_id} - {None})


def _reference(model, tokenizer, messages, stops: list[int], max_new_tokens: int) -> dict:
    import torch

    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops,
                             pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
    answer = out[: next((i for i, t in enumerate(out) if t in stops), len(out))]
    return {"messages": messages, "text": text, "ids": ids, "logits": logits.tolist(), "greedy": answer,
            "answer": tokenizer.decode(answer, skip_special_tokens=True)}


def _llama3_rope_case(tokenizer, work: Path, stops: list[int]) -> dict:
    """A random 2-layer Llama whose rope is Llama 3.1's, scaled from position 16 on (so short prompts feel it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from multitune.export.gguf import write_gguf

    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=256, rope_parameters=rope)).eval()
    path = work / "random-llama3-rope-f16.gguf"
    path.unlink(missing_ok=True)
    write_gguf(model, tokenizer, path, "f16")
    prompts = [_reference(model, tokenizer, p, stops, 8) for p in PROMPTS]
    return {"name": "random Llama, llama3 rope f16", "gguf": str(path), "prompts": prompts, "stops": stops,
            "max_new_tokens": 8}


def llamacpp_side(cases: list[dict]) -> dict:
    """Under the other interpreter: every comparison of every case, with llama-cpp-python when it is installed
    there, else xllamacpp (llama.cpp's own server code, prebuilt; the same comparisons through its API)."""
    try:
        import llama_cpp
    except ImportError:
        import xllamacpp

        return {"engine": f"xllamacpp {_version('xllamacpp')}", "cases": [_server_case(xllamacpp, c) for c in cases]}
    return {"engine": f"llama-cpp-python {llama_cpp.__version__}", "cases": _llama_cpp_python(cases)}


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _llama_cpp_python(cases: list[dict]) -> list[dict]:
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    results = []
    for case in cases:
        llm = Llama(model_path=case["gguf"], n_ctx=512, logits_all=True, n_threads=1, verbose=False, seed=0)
        meta = llm.metadata
        formatter = Jinja2ChatFormatter(meta["tokenizer.chat_template"], eos_token=_token(llm, meta, "eos"),
                                        bos_token=_token(llm, meta, "bos"))
        rows = [_compare(llm, formatter, p, case) for p in case["prompts"]]
        results.append({"name": case["name"], "gguf": Path(case["gguf"]).name, "rows": rows})
        llm.close()
    return results


def _token(llm, meta: dict, which: str) -> str:
    key = f"tokenizer.ggml.{which}_token_id"
    return llm.detokenize([int(meta[key])], special=True).decode() if key in meta else ""


def _compare(llm, formatter, p: dict, case: dict) -> dict:
    import numpy as np

    ids = p["ids"]
    tokens = llm.tokenize(p["text"].encode(), add_bos=False, special=True)
    rendered = formatter(messages=p["messages"]).prompt
    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)
    ref = np.asarray(p["logits"])
    greedy = []
    for tok in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if tok in case["stops"] or len(greedy) >= case["max_new_tokens"]:
            break
        greedy.append(tok)
    pairs = list(zip(greedy, p["greedy"], strict=False))
    agree = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))  # leading tokens that agree
    chat = llm.create_chat_completion(messages=p["messages"], temperature=0.0, top_k=1, repeat_penalty=1.0,
                                      max_tokens=case["max_new_tokens"])["choices"][0]["message"]["content"]
    return {"tokens_match": tokens == ids, "template_match": rendered == p["text"],
            "logit_diff": float(np.abs(logits - ref).max()), "logit_scale": float(np.abs(ref).max()),
            "top1_match": int(logits.argmax()) == int(ref.argmax()),
            "greedy_match": greedy == p["greedy"], "greedy_agree": agree, "greedy_len": len(p["greedy"]),
            "chat_match": _printable(chat) == _printable(p["answer"]), "chat": chat, "answer": p["answer"]}


def _server_case(xllamacpp, case: dict) -> dict:
    """One GGUF in llama.cpp's server code (no HTTP: its request handlers, called in-process)."""
    params = xllamacpp.CommonParams()
    params.model.path = case["gguf"]
    params.n_ctx, params.n_parallel, params.use_jinja = 512, 1, True
    params.cpuparams.n_threads = 1
    server = xllamacpp.Server(params)
    return {"name": case["name"], "gguf": Path(case["gguf"]).name,
            "rows": [_server_compare(server, p, case) for p in case["prompts"]]}


def _server_compare(server, p: dict, case: dict) -> dict:
    """As `_compare`, through requests: the prompt ids, then the prompt text, then the chat messages, one slot
    with prompt caching, so that the tokens the server reuses from the ids request (`cache_n`) show how much
    of its own tokenisation (and of its chat template's rendering) agrees with transformers' ids."""
    import math

    ids, n = p["ids"], case["max_new_tokens"]
    ask = {"n_predict": n, "temperature": 0.0, "repeat_penalty": 1.0, "n_probs": 5, "cache_prompt": True}
    by_ids = server.handle_completions({**ask, "prompt": ids})
    by_text = server.handle_completions({**ask, "prompt": p["text"]})
    chat = server.handle_chat_completions({"messages": p["messages"], "max_tokens": n, "temperature": 0.0,
                                           "repeat_penalty": 1.0})
    steps = by_ids["choices"][0]["logprobs"]["content"]
    greedy = [s["id"] for s in steps]
    greedy = greedy[: next((i for i, t in enumerate(greedy) if t in case["stops"]), len(greedy))]
    ref = p["logits"]  # plain Python: xllamacpp's venv has no numpy
    top = max(ref)
    log_total = top + math.log(sum(math.exp(x - top) for x in ref))
    first = steps[0]["top_logprobs"]
    text_first = by_text["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    pairs = list(zip(greedy, p["greedy"], strict=False))
    content = chat["choices"][0]["message"]["content"]
    # The text's tokens reuse all but the last of the ids' (the server always evaluates one), and the same
    # next-token distribution follows (up to float noise, larger in q8_0: 1 token evaluated instead of the
    # whole prompt, so other kernels), which a different last token would change.
    same_next = text_first[0]["id"] == first[0]["id"] and abs(text_first[0]["logprob"] - first[0]["logprob"]) < 1e-2
    return {"tokens_match": by_text["usage"]["prompt_tokens"] == len(ids)
            and by_text["timings"]["cache_n"] == len(ids) - 1 and same_next,
            "template_match": chat["usage"]["prompt_tokens"] == len(ids)
            and chat["timings"]["cache_n"] == len(ids) - 1,
            "logprob_diff": max(abs(t["logprob"] - (ref[t["id"]] - log_total)) for t in first),
            "top1_match": first[0]["id"] == ref.index(top),
            "greedy_match": greedy == p["greedy"],
            "greedy_agree": next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs)),
            "greedy_len": len(p["greedy"]), "chat_match": _printable(content) == _printable(p["answer"]),
            "chat": content, "answer": p["answer"]}


def _printable(text: str) -> str:
    """The text without what an answer cut inside a UTF-8 character decodes to: transformers writes U+FFFD for
    the stray bytes, llama-cpp-python drops them (a random model's answers are full of them)."""
    return "".join(c for c in text if c != "\ufffd" and (c.isprintable() or c in "\n\t")).strip()


def _report(run_dir: Path, results: dict) -> None:
    engine, results = results["engine"], results["cases"]
    print(f"run: {run_dir}; llama.cpp through {engine}\n")
    print("| file | prompts | tokens same | template same | next-token top-1 same | largest difference after "
          "the prompt | greedy answers identical | chat text identical |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        rows = r["rows"]
        n = len(rows)
        if "logit_diff" in rows[0]:  # llama-cpp-python: every logit
            worst = max(rows, key=lambda x: x["logit_diff"] / max(1.0, x["logit_scale"]))
            diff = f"logits {worst['logit_diff']:.3g} (largest {worst['logit_scale']:.3g})"
        else:  # the server: the top-5 log-probabilities
            diff = f"top-5 log-probs {max(x['logprob_diff'] for x in rows):.3g}"
        print(f"| {r['gguf']} | {n} | {sum(x['tokens_match'] for x in rows)}/{n} | "
              f"{sum(x['template_match'] for x in rows)}/{n} | {sum(x['top1_match'] for x in rows)}/{n} | "
              f"{diff} | "
              f"{sum(x['greedy_match'] for x in rows)}/{n} (agree {sum(x['greedy_agree'] for x in rows)}/"
              f"{sum(x['greedy_len'] for x in rows)} tokens) | {sum(x['chat_match'] for x in rows)}/{n} |")
    for r in results:
        for x in r["rows"]:
            if not x["chat_match"]:
                print(f"\n{r['gguf']}: llama.cpp {x['chat']!r} / transformers {x['answer']!r}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
