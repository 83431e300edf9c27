"""Run by test_distributed.py under `torchrun --nproc_per_node 2`: FSDP2 (fully_shard) on CPUs over gloo.

The model is sharded by `train/shard.py`, as `multitune train` shards it (one unit per decoder layer
plus the root), then multitune's checkpoint and final-adapter code run on the sharded (DTensor)
parameters. The whole recipe under FSDP runs in test_fsdp.py.
"""

import sys
from pathlib import Path

import safetensors.torch
import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from multitune.models.adapters import gather_for_saving, save_final
from multitune.train import checkpoint, shard
from multitune.train.state import TrainState

base_dir, out = sys.argv[1], Path(sys.argv[2])
accelerator = Accelerator(cpu=True)
assert accelerator.num_processes == 2


def sharded_lora():
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules="all-linear"))
    shard.shard_model(model, shard.Topology(fsdp=True, shard=2), accelerator)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


model, optimizer, scheduler = sharded_lora()
lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
assert type(lora_b).__name__ == "DTensor" and lora_b.to_local().shape[0] < lora_b.shape[0]  # really sharded
ids = torch.randint(10, 300, (2, 12), generator=torch.Generator().manual_seed(accelerator.process_index))
# Gradient accumulation as the loop does it: after the first micro-batch each process holds only its shard
# of every gradient (reduce-scattered at once), never a whole unsharded one until the step's end.
with shard.accumulating(model, accelerator):
    model(input_ids=ids, labels=ids).loss.backward()
assert type(lora_b.grad).__name__ == "DTensor" and lora_b.grad.to_local().shape == lora_b.to_local().shape
model(input_ids=ids, labels=ids).loss.backward()
optimizer.step()
scheduler.step()

state = TrainState(step=1)
path = checkpoint.save(out, accelerator, model, optimizer, scheduler, state, "seed: 0\n", {"world_size": 2})
weights = gather_for_saving(model, trainable_only=True, keep=accelerator.is_main_process)
assert bool(weights) == accelerator.is_main_process  # only the writer holds whole tensors
if accelerator.is_main_process:
    save_final(model, AutoTokenizer.from_pretrained(base_dir), out / "adapter", weights)

# A fresh sharded model resumes from the checkpoint: every process gets back its shard of the same values,
# the weights and optimizer state read by process 0 alone and broadcast.
fresh, fresh_opt, fresh_sched = sharded_lora()
read: list[str] = []
real_torch_load, real_load_file = torch.load, safetensors.torch.load_file

def reads(real):  # records the files read (torch.load also unpickles buffers for broadcast_object_list)
    return lambda f, *a, **k: (read.append(Path(f).name) if isinstance(f, str | Path) else None) or real(f, *a, **k)


torch.load, safetensors.torch.load_file = reads(real_torch_load), reads(real_load_file)
checkpoint.load(path, accelerator, fresh, fresh_opt, fresh_sched)
torch.load, safetensors.torch.load_file = real_torch_load, real_load_file
whole = {"trainable.safetensors", "optimizer.pt"}
assert (whole & set(read)) == (whole if accelerator.is_main_process else set()), read
for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters(), strict=True):
    if a.requires_grad:
        assert torch.equal(a.full_tensor(), b.full_tensor()), name
saved = load_file(path / "trainable.safetensors")
for name, p in fresh.named_parameters():
    if p.requires_grad:
        assert tuple(saved[name].shape) == tuple(p.shape), name
state_a, state_b = optimizer.state_dict()["state"], fresh_opt.state_dict()["state"]
for i in state_a:
    assert torch.equal(state_a[i]["exp_avg"].full_tensor(), state_b[i]["exp_avg"].full_tensor())
accelerator.wait_for_everyone()
print(f"rank {accelerator.process_index}: ok")
