"""Training FLOPs per token, and time from FLOPs at an assumed model FLOPs utilisation (MFU).

A matrix multiply costs 2 FLOPs per weight per token forward. Backward costs twice that when the weight
trains (the input's gradient and the weight's) and once when it is frozen (the input's gradient only).
So training every weight costs about 6N per token, and a frozen base with adapters about 4N plus 6 per
adapter weight; gradient checkpointing adds one more forward (2N). Attention's scores and weighted sum
add 4 x layers x attention width x the attended context per token forward (`attended_context`: the
row's width, as masked kernels skip nothing), 3 times that for training; the output head costs 2 x vocabulary x hidden only where logits are computed.
"""

from __future__ import annotations

from dataclasses import dataclass

from multitune.plan.shapes import ModelShape


@dataclass(frozen=True)
class FlopsPerToken:
    body: float
    """The decoder's linear layers (and adapters), forward and backward."""
    attention: float
    head: float
    """The output head, per computed position (scaled by the share of positions that have logits)."""
    recompute: float = 0.0
    """Gradient checkpointing's second forward of the decoder layers."""

    @property
    def total(self) -> float:
        return self.body + self.attention + self.head + self.recompute


def flops_per_token(shape: ModelShape, base_trains: bool, adapter_params: int, mean_context: float,
                    logit_share: float, head_trains: bool = False, checkpointing: bool = False) -> FlopsPerToken:
    """FLOPs per computed position of one training step.

    >>> from multitune.plan.shapes import llama_shape
    >>> s = llama_shape(4096, 14336, 32, 32, 8, 128256)
    >>> f = flops_per_token(s, True, 0, 0.0, 1.0)
    >>> round(f.total / s.total_params, 3)  # about 6N (the embedding lookup costs nothing)
    5.607
    """
    n = shape.linear_params
    body = (6.0 if base_trains else 4.0) * n + 6.0 * adapter_params
    attention_forward = 4.0 * shape.num_layers * shape.attn_dim * mean_context
    head_weights = shape.vocab_size * shape.hidden_size
    head = (6.0 if head_trains or base_trains else 4.0) * head_weights * logit_share
    recompute = 2.0 * n + attention_forward if checkpointing else 0.0
    return FlopsPerToken(body, 3.0 * attention_forward, head, recompute)


def attended_context(micro_batches: list[tuple[int, int]]) -> float:
    """Mean number of positions each computed position attends to, over micro-batches of (rows, width).

    transformers passes sdpa a mask for padded and packed rows, and with a mask the kernels compute every
    (query, key) pair of the row: no causal half is skipped, and a packed row's sequences cost as much as
    one sequence of the row's width. So the context of a position is its row's width.

    >>> attended_context([(2, 10), (1, 40)])  # (2*10*10 + 1*40*40) / (2*10 + 1*40)
    30.0
    """
    positions = sum(rows * width for rows, width in micro_batches)
    return sum(rows * width * width for rows, width in micro_batches) / positions if positions else 0.0


def seconds(flops: float, gpus: int, peak_tflops: float, mfu: float) -> float:
    """Wall time of `flops` on `gpus` devices of `peak_tflops` dense peak at utilisation `mfu`."""
    return flops / (gpus * peak_tflops * 1e12 * mfu)


UPDATE_PASSES = 16
"""Passes over a trainable-sized tensor per optimizer step: AdamW's element-wise updates one tensor at a
time (moments, square root, division, the update), the clipping norm and scale, and the new gradient's
first touch. Memory-bound: negligible against a GPU's FLOPs, not on a CPU."""


def update_bytes(trainable_params: int, param_bytes: int) -> float:
    """Memory traffic of one optimizer step (AdamW, clipping, fresh gradients)."""
    return float(trainable_params * param_bytes * UPDATE_PASSES)
