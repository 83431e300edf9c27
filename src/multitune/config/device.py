"""The settings whose right value depends on the device: `auto` and `null` resolved, once, at the start.

A run writes the resolved values into its `config.yaml`, so the file says what ran; `multitune plan`
resolves them for the GPU it plans for, so the estimate matches what the run would do. Pure: the caller
says what the device is.

- `train.mixed_precision: auto` is bf16 autocast on a CUDA GPU that has bf16 (Ampere and newer), and
  `no` elsewhere (a CPU; fp16 with loss scaling on older GPUs stays the user's choice).
- `model.dtype: auto` on such a GPU is bfloat16 for the frozen base of an adapter method, and float32
  for full fine-tuning: AdamW then updates float32 master weights while autocast computes in bf16
  (bfloat16 weights would take updates smaller than their 8-bit mantissa resolves as zero). float32
  everywhere else.
- `train.share_prefix: null` is on for padded batches under sdpa or eager attention on a CPU, where it
  was measured (1.8x a SmolLM2 step, docs/benchmarks.md), and off on a GPU: there the layout's boolean
  mask with grouped-query attention sends sdpa to its math kernel, which keeps an (N, H, Q, K) float32
  matrix per layer, and no GPU measurement has shown the layout winning yet.
"""

from __future__ import annotations

from multitune.config.schema import RunConfig


def resolved_mixed_precision(cfg: RunConfig, gpu: bool, bf16: bool) -> str:
    """`train.mixed_precision` with `auto` decided for the device."""
    if cfg.train.mixed_precision != "auto":
        return cfg.train.mixed_precision
    return "bf16" if gpu and bf16 else "no"


def resolved_dtype(cfg: RunConfig, gpu: bool, bf16: bool) -> str:
    """`model.dtype` with `auto` decided for the device and the adapter method."""
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    return "bfloat16" if gpu and bf16 and cfg.adapter.method != "full" else "float32"


def resolved_share_prefix(cfg: RunConfig, gpu: bool) -> bool:
    """`train.share_prefix` with `null` decided: on for padded batches under a masked attention on a CPU."""
    if cfg.train.share_prefix is not None:
        return cfg.train.share_prefix
    masked = not cfg.data.packing and cfg.model.attn_implementation != "flash_attention_2"
    return masked and not gpu


def for_device(cfg: RunConfig, gpu: bool, bf16: bool) -> RunConfig:
    """`cfg` with every device-dependent `auto`/`null` replaced by its value for this device (explicit
    values are kept as they are, so resolving twice changes nothing).

    >>> from multitune.config import validate
    >>> cfg = validate({"tasks": [{"name": "t", "kind": "classification", "source": "demo:claims"}]})
    >>> gpu = for_device(cfg, gpu=True, bf16=True)
    >>> gpu.train.mixed_precision, gpu.model.dtype, gpu.train.share_prefix
    ('bf16', 'bfloat16', False)
    >>> cpu = for_device(cfg, gpu=False, bf16=False)
    >>> cpu.train.mixed_precision, cpu.model.dtype, cpu.train.share_prefix
    ('no', 'float32', True)
    """
    train = cfg.train.model_copy(update={
        "mixed_precision": resolved_mixed_precision(cfg, gpu, bf16),
        "share_prefix": resolved_share_prefix(cfg, gpu),
    })
    model = cfg.model.model_copy(update={"dtype": resolved_dtype(cfg, gpu, bf16)})
    return cfg.model_copy(update={"train": train, "model": model})


def describe(cfg: RunConfig) -> str:
    """One line for the start of a run: the batch layout and the precision it trains with."""
    layout = "packed rows" if cfg.data.packing else ("shared-prefix rows" if cfg.train.share_prefix else "padded rows")
    autocast = cfg.train.mixed_precision
    return (f"layout: {layout}; weights {cfg.model.dtype}, "
            f"{'autocast ' + autocast if autocast != 'no' else 'no autocast'}")
