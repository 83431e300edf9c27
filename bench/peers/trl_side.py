"""The peer a user would pick instead of multitune, measured on the same step: TRL's `SFTTrainer` + PEFT
LoRA (DESIGN.md #12). A bench-only dependency (`pip install 'multitune[bench]'`).

`trl_lora_steps` trains a model (object or folder) for a few optimizer steps on prompt/completion
conversations (the loss on the completion only, as multitune trains answers) and reports what
bench/gpu/check.py reports for multitune's own step: tokens/s of real tokens, seconds per step, peak GPU
memory and the losses. Timing is taken between consecutive step ends, data loading included, after
`warmup_steps`; real tokens are counted in the batches the collator makes (non-padding tokens).

TRL 1.16 notes: `warmup_ratio` is gone from `SFTConfig` (`warmup_steps` is used); `padding_free` without
packing refuses `max_length`; `gradient_checkpointing` and `bf16` default to True there, so both are set.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


def trl_lora_steps(model: Any, tokenizer: Any, rows: list[dict[str, Any]], lora: LoraSettings, *,
                   micro_batch_size: int, learning_rate: float, steps: int, warmup_steps: int, max_length: int,
                   packing: bool, gradient_checkpointing: bool = False, output_dir: str | None = None,
                   seed: int = 0, sampling: str = "random") -> dict[str, Any]:
    """Train `model` (a transformers model or a folder) with LoRA through TRL's SFTTrainer for `steps`
    optimizer steps of `micro_batch_size` rows (packed rows of `max_length` tokens when `packing`).

    `rows` are conversational prompt/completion rows: {"prompt": [messages], "completion": [assistant]}.
    `sampling` is the Trainer's `train_sampling_strategy`: "sequential" trains on `rows` in the order
    given (bench/peers/compare.py hands over multitune's own order, so both train on the same batches).
    Returns tokens_per_s, real_tokens_per_step, step_s (median), peak_memory_gib (None without CUDA),
    losses (one per step), loss_tokens (the tokens each step's loss averages over), trainable_params and
    setup_s (SFTTrainer's tokenising and packing).
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    if steps <= warmup_steps:
        raise ValueError(f"steps ({steps}) must exceed warmup_steps ({warmup_steps}) to time anything")
    cuda = torch.cuda.is_available()
    started = time.perf_counter()
    args = SFTConfig(
        output_dir=output_dir or tempfile.mkdtemp(prefix="peer-trl-"), max_steps=steps,
        per_device_train_batch_size=micro_batch_size, gradient_accumulation_steps=1, learning_rate=learning_rate,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none",
        bf16=cuda, use_cpu=not cuda, gradient_checkpointing=gradient_checkpointing, seed=seed,
        max_length=max_length, packing=packing, dataloader_num_workers=0, disable_tqdm=True,
        train_sampling_strategy=sampling,
        model_init_kwargs={"dtype": torch.bfloat16 if cuda else torch.float32} if isinstance(model, str) else None,
    )
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)
    tokens, loss_tokens = _count_tokens(trainer)
    clock = _StepClock()
    trainer.add_callback(clock)
    setup_s = time.perf_counter() - started
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    peak = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    timed = slice(warmup_steps, steps)
    seconds = clock.intervals()
    result = {
        "tokens_per_s": round(sum(tokens[timed]) / sum(seconds[timed]), 1),
        "real_tokens_per_step": round(statistics.mean(tokens[timed]), 1),
        "loss_tokens": loss_tokens[:steps],
        "step_s": round(statistics.median(seconds[timed]), 4), "first_step_s": round(seconds[0], 3),
        "peak_memory_gib": peak, "losses": [round(float(x), 5) for x in losses],
        "trainable_params": trainable, "setup_s": round(setup_s, 2),
    }
    del trainer
    return result


def _count_tokens(trainer: Any) -> tuple[list[int], list[int]]:
    """Wrap the trainer's collator so each batch's real tokens and the tokens its loss is taken over
    (labels other than -100, before the shift) are recorded, in order (the data loader makes batch i
    before step i runs, whatever it prefetches)."""
    counts: list[int] = []
    loss_counts: list[int] = []
    collate = trainer.data_collator

    def counting(examples: list[Any]) -> dict[str, Any]:
        batch = collate(examples)
        mask = batch.get("attention_mask")
        counts.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        loss_counts.append(int((batch["labels"] != -100).sum()) if "labels" in batch else 0)
        return batch

    trainer.data_collator = counting
    return counts, loss_counts


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _StepClock(TrainerCallback):
    """Stamps the start of training and the end of every optimizer step."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _synchronize()
        self.stamps = [time.perf_counter()]

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        _synchronize()
        self.stamps.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
