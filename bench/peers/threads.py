"""What idle OpenMP threads should do in a run alone on the machine: spin (`OMP_WAIT_POLICY=ACTIVE`, the
OpenMP default) or sleep (`PASSIVE`, what `multitune` sets unless the environment says otherwise).

    python -m bench.peers.threads [--steps 6] [--rounds 2]

Each policy runs in a fresh process (the policy is read when the OpenMP runtime starts), alternating,
timing LoRA steps (r 16, all linear layers, AdamW) of SmolLM2-135M-Instruct on 16 rows of 56 tokens with
the machine's cores; the first step is warm-up. Prints the median seconds per step of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from bench.common import child_env

STEPS = r"""
import json, sys, time, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from multitune.config.schema import ModelConfig
from multitune.models import gguf
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(gguf.converted_folder(ModelConfig(name="smollm2-135m-instruct")),
                                             dtype=torch.float32)
model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(100, 40000, (16, 56))
labels = ids.clone()
labels[:, :-6] = -100
times = []
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    model(input_ids=ids, labels=labels, use_cache=False).loss.backward()
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - start)
print(json.dumps({"threads": torch.get_num_threads(), "step_s": times}))
"""


def one(policy: str, steps: int) -> list[float]:
    env = child_env(OMP_WAIT_POLICY=policy)
    out = subprocess.run([sys.executable, "-c", STEPS, str(steps)], env=env, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["step_s"][1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    times: dict[str, list[float]] = {"ACTIVE": [], "PASSIVE": []}
    for _ in range(args.rounds):
        for policy in times:
            times[policy] += one(policy, args.steps)
    print("| OMP_WAIT_POLICY | median s/step | steps timed |\n|---|---|---|")
    for policy, t in times.items():
        print(f"| {policy} | {statistics.median(t):.3f} | {len(t)} |")


if __name__ == "__main__":
    main()
