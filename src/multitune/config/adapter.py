"""What trains: the adapter section of a run's config (`adapter:`), one method and its settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from multitune.section import Section

LORA_FAMILY = ("lora", "dora", "qlora")
"""Methods that train low-rank A and B matrices (and read `r`, `alpha`, `dropout`)."""
VIRTUAL_TOKENS = ("prompt_tuning", "prefix_tuning")
"""Methods that train virtual tokens in front of every sequence (and read `num_virtual_tokens`)."""


class AdapterConfig(Section):
    """What trains. Sizes and starts a method does not use (`r` for ia3, `num_virtual_tokens` and
    `prompt_init_text` for lora, ...) are read by their methods only, so one config can sweep
    `adapter.method`; switches that change what a method does (`use_rslora`, `lora_init`,
    `loraplus_lr_ratio`) are refused where they do not apply."""

    method: Literal["lora", "dora", "qlora", "full", "ia3", "prompt_tuning", "prefix_tuning"] = "lora"
    """`lora`: low-rank adapters (peft); `dora`: weight-decomposed LoRA; `qlora`: LoRA on a base quantised
    to 4 bits (bitsandbytes NF4, see `quantization`); `full`: every weight trains; `ia3`: one learned
    scale per feature of each target layer ((IA)^3, the lightest adapter); `prompt_tuning`: trained
    embeddings of `num_virtual_tokens` tokens put before every sequence (soft prompts); `prefix_tuning`:
    trained keys and values of `num_virtual_tokens` tokens at every layer."""
    r: int = Field(16, ge=1)
    """LoRA rank (lora, dora, qlora)."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scale numerator: the update is scaled by alpha / r (alpha / sqrt(r) with `use_rslora`)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA path's input (lora, dora, qlora). 0 by default: with dropout, DoRA runs every
    adapted layer's base matmul a second time (on the dropped-out input) and every adapted layer keeps a
    dropped-out copy of its input for the backward pass; regularise with it on small data where it helps."""
    target_modules: str | list[str] = "all-linear"
    """`all-linear` (every linear layer but the output head), `attention` (q/k/v/o projections) or an
    explicit list of module names. `ia3` scales the outputs of attention projections and the inputs of
    MLP projections (its paper's choice is `[k_proj, v_proj, down_proj]`)."""
    modules_to_save: list[str] = []
    """Modules trained in full and saved with the adapter, e.g. `[embed_tokens, lm_head]` when the
    vocabulary changed or the base has never produced the answers' tokens."""
    use_rslora: bool = False
    """Rank-stabilised LoRA: scale by alpha / sqrt(r) instead of alpha / r (helps at large r)."""
    lora_init: Literal["default", "pissa", "olora"] = "default"
    """How LoRA starts (method lora): `default` (A random, B zero: the model starts as the base);
    `pissa` (A and B from the principal singular vectors of each weight, which the base keeps the rest
    of: a full SVD per layer, minutes on an 8B model); `olora` (from each weight's QR decomposition).
    pissa and olora change the base's weights while training; the saved adapter is converted to an
    ordinary LoRA of rank 2r that applies to the original base (peft's conversion)."""
    loraplus_lr_ratio: float | None = Field(None, gt=0)
    """LoRA+: the B matrices learn at `train.learning_rate` x this ratio (its paper suggests 16); null:
    one learning rate for A and B."""
    num_virtual_tokens: int = Field(20, ge=1)
    """Virtual tokens of prompt_tuning and prefix_tuning (they also shorten the usable context)."""
    prompt_init_text: str | None = None
    """prompt_tuning and prefix_tuning: start the virtual tokens as this text (its tokens repeated or cut to
    `num_virtual_tokens`), so the run starts as the base model reading the text before every input, e.g.
    "Answer with the label only."; prompt tuning takes the text's embeddings, prefix tuning the keys and
    values the base computes for it at every layer. null: random (peft's start)."""

    @model_validator(mode="after")
    def _switches_fit_the_method(self) -> AdapterConfig:
        m, problems = self.method, []
        if self.use_rslora and m not in LORA_FAMILY:
            problems.append(f"use_rslora applies to lora, dora and qlora, not {m}: remove it")
        if self.lora_init != "default" and m != "lora":
            problems.append(f"lora_init={self.lora_init} applies to method lora, not {m}: set "
                            "adapter.method=lora or remove lora_init")
        if self.loraplus_lr_ratio is not None and m not in LORA_FAMILY:
            problems.append(f"loraplus_lr_ratio (LoRA+) applies to lora, dora and qlora, not {m}: remove it")
        if self.modules_to_save and m in VIRTUAL_TOKENS + ("full",):
            problems.append(f"modules_to_save does not apply to {m}" + (
                " (peft trains only the virtual tokens): use method lora with modules_to_save" if m != "full"
                else " (every module trains): remove it"))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def virtual_tokens(self) -> int:
        """Tokens the method puts before every sequence (0 for weight adapters and full fine-tuning)."""
        return self.num_virtual_tokens if self.method in VIRTUAL_TOKENS else 0
