"""What autograd keeps between the forward and the backward pass of one micro-batch, in bytes.

PyTorch saves a tensor for the backward pass only when a gradient needs it: a frozen linear layer keeps
its weight, not its input; a trained one (or one with a LoRA adapter) keeps its input. The per-layer
count below follows a Hugging Face Llama decoder layer under `sdpa` attention (flash or memory-efficient
kernels: no (T, T) score matrix is kept), term by term:

- each RMSNorm keeps its input in float32 (and, when its weight trains, the normalised value);
- the inputs of the four linear groups (q/k/v, o, gate/up, down) are kept once if any layer of the group
  trains or carries an adapter; peft casts a layer's input to the adapter's float32 when the base is
  16-bit and no autocast runs, and dropout makes a new tensor and a mask: each such copy is kept per
  wrapped layer;
- attention keeps q, k and v (repeated to every query head when grouped-query attention runs with a
  mask, as transformers does for padded and packed batches), its output (which is also o_proj's input)
  and the log-sum-exp per head; and, per row, the (T, T) mask made additive in the compute dtype;
- SwiGLU keeps the gate projection, its SiLU and the up projection;
- LoRA's B keeps A's output (r per token); DoRA keeps each wrapped layer's base output (it is rescaled by
  the trained magnitude); (IA)^3 keeps an attention projection's output (its scale multiplies it) and an
  MLP projection's input (its scale multiplies that);
- prompt and prefix tuning train no layer but need every layer's gradient: the frozen-layer terms, and at
  every layer the virtual tokens' keys and values, which every row attends (`activation_bytes`).

Checked against the tensors autograd really keeps (a `saved_tensors_hooks` count on the tiny model and
SmolLM2-135M): within 2%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from multitune.plan.shapes import ModelShape

MLP = ("gate_proj", "up_proj", "down_proj")  # (IA)^3 scales their inputs, the other projections' outputs


@dataclass(frozen=True)
class Precision:
    """Bytes per element: activations (the compute dtype), the base's weights, the adapters' weights."""

    act: int
    weights: int
    adapter: int = 4
    autocast: bool = False
    """Mixed precision: the adapter's matmul runs in the 16-bit compute dtype, so the copy of its input
    that it keeps is 16-bit too (without autocast it is the adapter's float32)."""

    @property
    def adapter_cast(self) -> bool:
        """peft casts a wrapped layer's input to the adapter's dtype when it differs from the base's, unless
        autocast decides the matmul's dtype (`models/adapters.py` turns the cast off then)."""
        return self.adapter != self.weights and not self.autocast


def layer_saved_bytes(shape: ModelShape, prec: Precision, trained: Sequence[str], wrapped: Sequence[str],
                      full: bool = False, dropout: bool = False, dora: bool = False, repeat_kv: bool = True,
                      r: int = 0, ia3: bool = False) -> float:
    """Bytes kept per token by one decoder layer. `trained`: linear kinds whose weights train (every one
    under full fine-tuning); `wrapped`: kinds with a LoRA adapter of rank `r`, or (IA)^3 scales (`ia3`)."""
    h, i, q, a = shape.hidden_size, shape.intermediate_size, shape.attn_dim, prec.act
    kv = q if repeat_kv and shape.num_kv_heads != shape.num_heads else shape.kv_dim
    keeps = set(trained) | (set(wrapped) & set(MLP) if ia3 else set(wrapped))
    inputs = {("q_proj", "k_proj", "v_proj"): h, ("o_proj",): q, ("gate_proj", "up_proj"): h, ("down_proj",): i}
    total = 2 * 4 * (h + 1) + (2 * a * h if full else 0)  # norms: float32 inputs and 1/rms (normalised values)
    # o_proj's input is attention's output itself: the kernels return it laid out (B, T, heads, dim).
    total += sum(a * width for group, width in inputs.items() if keeps & set(group) and group != ("o_proj",))
    total += a * (q + 2 * kv + q) + 4 * shape.num_heads  # attention: q, k, v, output; log-sum-exp
    total += 3 * a * i  # SwiGLU: gate, SiLU(gate), up
    copy = prec.act if prec.autocast else prec.adapter
    extra = copy if prec.adapter_cast or dropout else 0
    for lin in shape.linears:
        if lin.name in wrapped and ia3:  # an MLP input's float32 copy, or an attention output
            total += lin.in_features * (prec.adapter if prec.adapter_cast else 0) if lin.name in MLP \
                else a * lin.out_features
        elif lin.name in wrapped:
            total += lin.in_features * (extra + (1 if dropout else 0))  # cast/dropout copy and its mask
            total += r * copy  # A's output, kept by B
            if dora:
                total += a * lin.out_features
    return float(total)


def logits_bytes_per_position(vocab_size: int, act: int) -> float:
    """The loss's peak per position with logits: the logits (in the compute dtype), their float32 copy
    when that differs, the kept log-softmax, and two float32 gradients of the same size in the backward.

    >>> logits_bytes_per_position(128256, 2)  # bf16 logits: 2 + 4 + 4 + 4 bytes per vocabulary entry
    1795584.0
    """
    return float(vocab_size * (3 * 4 + (act if act != 4 else 0)))


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch's geometry: rows x width positions computed (padding included), and how many
    positions need logits (the answer positions with `answer_logits_only`, else all)."""

    rows: int
    width: int
    logit_positions: int

    @property
    def positions(self) -> int:
        return self.rows * self.width


def activation_bytes(shape: ModelShape, prec: Precision, mb: MicroBatch, per_layer: float,
                     checkpointing: bool = False, head_trains: bool = False, full: bool = False,
                     virtual_tokens: int = 0) -> dict[str, float]:
    """The micro-batch's activations: the decoder layers (all of them, or with gradient checkpointing
    one kept input per layer plus one layer recomputed at a time), the final norm and head input, the
    backward pass's transient gradients (a few hidden- and MLP-wide tensors), and the logits peak.
    `virtual_tokens` (prompt, prefix tuning): keys and values every row holds at every layer, repeated to
    every query head (the rows' mask makes transformers repeat grouped keys), and mask columns."""
    h, i, n = shape.hidden_size, shape.intermediate_size, mb.positions
    if checkpointing:
        layers = n * (shape.num_layers * prec.act * h + per_layer)
    else:
        layers = n * shape.num_layers * per_layer
    layers += mb.rows * virtual_tokens * shape.num_layers * 2 * shape.attn_dim * prec.act
    final = n * (4 * h + (prec.act * h if full else 0)) + (mb.logit_positions * prec.act * h if head_trains else 0)
    transient = n * prec.act * (2 * h + 3 * i)
    # sdpa turns the boolean (T, T) mask of a padded or packed row into an additive one in the compute
    # dtype at every layer and keeps it for the backward pass.
    masks = mb.rows * mb.width * (mb.width + virtual_tokens) * prec.act * (1 if checkpointing else shape.num_layers)
    logits = mb.logit_positions * logits_bytes_per_position(shape.vocab_size, prec.act)
    return {"layers": float(layers), "attention_masks": float(masks), "final_norm_and_head": float(final),
            "backward_transient": float(transient), "logits": float(logits)}
