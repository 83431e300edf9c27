"""llama.cpp itself applies `multitune export --format gguf-lora` to its base: base GGUF + adapter GGUF must
give the merged export's logits (within f16 rounding) and greedy answers.

    # once, outside the project's venv: llama-cpp-cffi 0.4.42 is a prebuilt wheel (CPU build of llama.cpp,
    # cp311, manylinux_2_34); its package __init__ needs transformers < 5, so only its compiled module is used
    python3 -m venv /tmp/llamacpp-venv && /tmp/llamacpp-venv/bin/pip install --no-deps llama-cpp-cffi==0.4.42
    /tmp/llamacpp-venv/bin/pip install cffi numpy
    # Debian 12's libstdc++ (GCC 12) lacks __cxa_call_terminate, which the wheel's GCC 14 build calls; a
    # two-line shim provides it (it only runs when an exception escapes a noexcept function, to terminate)
    printf '#include <exception>\\nextern "C" void* __cxa_begin_catch(void*) noexcept;\\nextern "C" void __cxa_call_terminate(void* e) noexcept { if (e) __cxa_begin_catch(e); std::terminate(); }\\n' > /tmp/shim.cc
    g++ -shared -fPIC -O2 -o /tmp/libcxa_shim.so /tmp/shim.cc
    # the check: trains a short SmolLM2 rsLoRA run (or takes RUN_DIR), exports, runs llama.cpp
    OMP_NUM_THREADS=1 python -m bench.export.llamacpp_lora [RUN_DIR] --workdir DIR \\
        --llamacpp-python /tmp/llamacpp-venv/bin/python --preload /tmp/libcxa_shim.so

This interpreter trains (if no RUN_DIR is given: `configs/smollm2-banking77.yaml`, rsLoRA r=16, 30 steps)
and writes, with multitune's own exporters: the merged GGUF (`--format gguf`, f16), the adapter GGUF
(`--format gguf-lora`, f16) with its Modelfile, and the base as an f16 GGUF; the prompts' token ids come
from the run's tokenizer. It then runs itself under the llama.cpp interpreter (`--llamacpp-side`), which
loads each model with llama.cpp's C API (`llama_model_load_from_file`, `llama_adapter_lora_init`,
`llama_set_adapter_lora`, `llama_decode`) and computes every position's logits and a greedy answer for
each prompt: the merged f16 model; the f16 base + adapter; the wheel's Q4_1 base + adapter (what the
Modelfile runs); the f16 base alone (the adapter's effect, so that a lost adapter cannot pass).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO

PROMPTS = [
    [{"role": "user", "content": "I still have not received my new card, what should I do?"}],
    [{"role": "user", "content": "Why was I charged a fee for topping up with my card?"}],
    [{"role": "user", "content": "Hello! What can you do?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Summarise in one sentence: the meeting moved from Monday to Thursday, 10:30."}],
]
TRAIN = ["train.max_steps=30", "adapter.use_rslora=true", "eval.baseline=false", "eval.max_rows=40",
         "eval.every_steps=null", "eval.generate=never", "checkpoint.every_minutes=null", "eval.best_metric=null"]


def main() -> None:
    args = _args()
    if args.llamacpp_side:
        print(json.dumps(llamacpp_side(json.loads(Path(args.llamacpp_side).read_text()))))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llamacpp-lora-"))
    run_dir = Path(args.run_dir) if args.run_dir else _smollm2_run(work)
    case = export_side(run_dir, work, args.max_new_tokens)
    (work / "case.json").write_text(json.dumps(case))
    env = {"LD_PRELOAD": args.preload} if args.preload else {}
    import os

    done = subprocess.run([args.llamacpp_python, "-m", "bench.export.llamacpp_lora", "--llamacpp-side",
                           str(work / "case.json")], cwd=REPO, capture_output=True, text=True, check=False,
                          env={**os.environ, **env})
    if done.returncode != 0:
        sys.exit(done.stderr[-4000:])
    results = json.loads(done.stdout.strip().splitlines()[-1])
    (work / "llamacpp_lora_check.json").write_text(json.dumps(results, indent=1))
    print(table(results))


def _smollm2_run(work: Path) -> Path:
    out = work / "run"
    if not (out / "adapter").is_dir():
        subprocess.run([sys.executable, "-m", "multitune", "train", str(REPO / "configs" / "smollm2-banking77.yaml"),
                        *TRAIN, f"output_dir={out}"], check=True)
    return out


def export_side(run_dir: Path, work: Path, max_new_tokens: int) -> dict:
    """The three GGUFs, the Modelfile and the prompts' ids, with multitune's own code."""
    from multitune.data.tokenize import prompt_ids
    from multitune.export.gguf import write_gguf
    from multitune.export.to_gguf import export_gguf, export_gguf_lora
    from multitune.models import gguf, load
    from multitune.models.trained import read_run_config

    cfg = read_run_config(run_dir)
    merged, adapter, base = work / "merged" / "model.gguf", work / "lora" / "adapter.gguf", work / "lora" / "base-f16.gguf"
    if not merged.exists():
        export_gguf(run_dir, merged, "f16")
    if not adapter.exists():
        export_gguf_lora(run_dir, adapter, "f16")
    tokenizer = load.load_tokenizer(str(run_dir / "adapter"), cfg.model)
    if not base.exists():
        base_name = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
        write_gguf(load.load_model(base_name, cfg.model), tokenizer, base, "f16")
    stops = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>") if t in tokenizer.get_vocab()]
    return {"models": {"merged f16": [str(merged), None], "base f16 + adapter": [str(base), str(adapter)],
                       "base Q4_1 (the wheel's, the Modelfile's FROM) + adapter":
                           [str(gguf.gguf_path(cfg.model.name)) if cfg.model.is_gguf else str(base), str(adapter)],
                       "base f16 alone": [str(base), None]},
            "prompts": [prompt_ids(tokenizer, p) for p in PROMPTS], "stops": stops,
            "max_new_tokens": max_new_tokens, "modelfile": (adapter.parent / "Modelfile").read_text()}


def llamacpp_side(case: dict) -> dict:
    """Runs under the llama.cpp interpreter: numpy and the wheel's compiled module only."""
    import numpy as np

    lib, ffi = _llama()
    lib.llama_backend_init()
    out = {}
    for label, (model_path, adapter_path) in case["models"].items():
        model = lib.llama_model_load_from_file(model_path.encode(), lib.llama_model_default_params())
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_threads, params.n_threads_batch = 512, 512, 512, 2, 2
        ctx = lib.llama_init_from_model(model, params)
        if adapter_path:
            lora = lib.llama_adapter_lora_init(model, adapter_path.encode())
            assert lora != ffi.NULL, f"llama.cpp refused {adapter_path}"
            assert lib.llama_set_adapter_lora(ctx, lora, 1.0) == 0
        n_vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(model))
        logits, answers = [], []
        for ids in case["prompts"]:
            lib.llama_kv_self_clear(ctx)
            rows = _decode(lib, ffi, ctx, ids, 0, n_vocab, all_logits=True)
            logits.append(rows.tolist())
            answer, pos = [], len(ids)
            nxt = int(np.argmax(rows[-1]))
            while len(answer) < case["max_new_tokens"] and nxt not in case["stops"]:
                answer.append(nxt)
                nxt = int(np.argmax(_decode(lib, ffi, ctx, [nxt], pos, n_vocab)[-1]))
                pos += 1
            answers.append(answer)
        out[label] = {"logits": logits, "answers": answers}
        lib.llama_free(ctx)
        lib.llama_model_free(model)
    return compare(out)


def _decode(lib, ffi, ctx, ids: list[int], start: int, n_vocab: int, all_logits: bool = False):
    import numpy as np

    batch = lib.llama_batch_init(len(ids), 0, 1)
    for i, tok in enumerate(ids):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, start + i, 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1 if all_logits or i == len(ids) - 1 else 0
    batch.n_tokens = len(ids)
    assert lib.llama_decode(ctx, batch) == 0
    wanted = range(len(ids)) if all_logits else [len(ids) - 1]
    rows = np.array([np.frombuffer(ffi.buffer(lib.llama_get_logits_ith(ctx, i), 4 * n_vocab), dtype=np.float32)
                     for i in wanted])
    lib.llama_batch_free(batch)
    return rows


def compare(out: dict) -> dict:
    """Each model against the merged one: largest logit difference (every position of every prompt),
    the largest logit, same top token, same greedy answers."""
    import numpy as np

    ref = out["merged f16"]
    rows = {}
    for label, got in out.items():
        diff = max(float(np.abs(np.array(a) - np.array(b)).max()) for a, b in zip(got["logits"], ref["logits"], strict=True))
        scale = max(float(np.abs(np.array(b)).max()) for b in ref["logits"])
        top = [int((np.array(a).argmax(-1) == np.array(b).argmax(-1)).sum()) for a, b in zip(got["logits"], ref["logits"], strict=True)]
        same = sum(a == b for a, b in zip(got["answers"], ref["answers"], strict=True))
        rows[label] = {"largest_logit_difference": diff, "largest_logit": scale,
                       "same_top_token": f"{sum(top)}/{sum(len(b) for b in ref['logits'])}",
                       "greedy_answers_same": f"{same}/{len(ref['answers'])}",
                       "answer_tokens": [len(a) for a in got["answers"]]}
    return rows


def table(results: dict) -> str:
    lines = ["| llama.cpp runs | largest logit difference against the merged f16 (largest logit) | same top token "
             "(every position) | greedy answers same as the merged |", "|---|---|---|---|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['largest_logit_difference']:.3g} ({r['largest_logit']:.1f}) | "
                     f"{r['same_top_token']} | {r['greedy_answers_same']} |")
    return "\n".join(lines)


def _llama():
    """The wheel's compiled llama.cpp module (its package __init__ imports transformers < 5: skipped)."""
    import glob
    import importlib.util
    import site

    paths = [p for d in site.getsitepackages() for p in glob.glob(f"{d}/llama/_llama_cpp_cpu*.so")]
    spec = importlib.util.spec_from_file_location("_llama_cpp_cpu", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.lib, module.ffi


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?", help="a finished LoRA run (default: train a short SmolLM2 one)")
    p.add_argument("--workdir", help="where the run and the files go (default: a new temporary folder)")
    p.add_argument("--llamacpp-python", default="/tmp/llamacpp-venv/bin/python")
    p.add_argument("--preload", help="a library to LD_PRELOAD into the llama.cpp interpreter (the libstdc++ shim)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--llamacpp-side", help=argparse.SUPPRESS)
    return p.parse_args()


if __name__ == "__main__":
    main()
