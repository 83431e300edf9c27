"""Memory of one training process, term by term, as pure functions of the model's shape, the adapter
and one micro-batch's geometry. Bytes everywhere; `GiB` only when shown.

What is counted, and why it is there (the PyTorch and peft behaviour each term stands for):
- weights: every parameter in its dtype; QLoRA's 4-bit NF4 linear layers with their absmax constants
  (double quantisation stores those in 8 bits plus one float32 per 256 blocks), and the rest (embeddings,
  head, norms) in float32, because peft's `prepare_model_for_kbit_training` casts them up;
- trainable: LoRA's A and B (float32: peft keeps adapters in float32 whatever the base), DoRA's magnitude
  vectors, (IA)^3's scale vectors, prompt tuning's embeddings or prefix tuning's keys and values (float32
  too), and a trainable copy of each `modules_to_save` module (the original stays, frozen);
- gradients: one per trainable parameter, in its dtype; AdamW: two states of the same size and dtype;
- activations: what autograd keeps for the backward pass, per token and layer (`layer_saved_bytes`);
- logits: the (positions, vocabulary) block, its float32 copy and log-softmax, and their gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from multitune.plan.shapes import ModelShape

GiB = 1024**3
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
"""(IA)^3 scales these layers' inputs (peft's feedforward modules), the others' outputs."""


def nf4_bytes(n_params: int, blocksize: int = 64, double_quant: bool = True) -> float:
    """Bytes of `n_params` weights in bitsandbytes 4-bit: half a byte each, plus one absmax per block of 64
    (float32; with double quantisation 8 bits, plus a float32 scale per 256 absmax values).

    >>> nf4_bytes(64 * 256)  # 8192 B of weights + 256 B of 8-bit absmax + 4 B of second-level scale
    8452.0
    >>> nf4_bytes(64 * 256, double_quant=False)
    9216.0
    """
    blocks = n_params / blocksize
    absmax = blocks * 1 + blocks / 256 * 4 if double_quant else blocks * 4
    return n_params / 2 + absmax


def resolve_targets(shape: ModelShape, target_modules: str | Sequence[str]) -> list[str]:
    """The decoder's linear layer names LoRA wraps: `all-linear` (every one; peft leaves the output head
    out), `attention` (q/k/v/o), or the listed names that the model has."""
    names = [lin.name for lin in shape.linears]
    if target_modules == "all-linear":
        return names
    wanted = ATTENTION if target_modules == "attention" else [target_modules] if isinstance(
        target_modules, str) else list(target_modules)
    return [n for n in names if n in wanted]


def module_params(shape: ModelShape, name: str) -> int:
    """Parameters of a `modules_to_save` entry: `embed_tokens`, `lm_head` (the embedding when tied), or a
    decoder linear layer kind (all layers)."""
    if name == "embed_tokens":
        return shape.embedding_params
    if name == "lm_head":
        return shape.lm_head_params or shape.embedding_params
    lin = shape.linear(name)
    return lin.params if lin else 0


@dataclass(frozen=True)
class Trainable:
    lora: int = 0
    """LoRA A and B matrices: r x (in + out) per wrapped layer."""
    dora: int = 0
    """DoRA's magnitude vector: one value per output feature of each wrapped layer."""
    ia3: int = 0
    """(IA)^3's vectors: one value per output feature of an attention projection, per input feature of an
    MLP projection."""
    virtual: int = 0
    """Prompt tuning's embeddings (P x hidden) or prefix tuning's keys and values (P x layers x 2 x kv)."""
    saved_modules: int = 0
    """Trainable copies of `modules_to_save`."""
    base: int = 0
    """Base weights that train (full fine-tuning)."""

    @property
    def adapter(self) -> int:
        """The adapter's own parameters, which peft keeps in float32."""
        return self.lora + self.dora + self.ia3 + self.virtual

    @property
    def total(self) -> int:
        return self.adapter + self.saved_modules + self.base


def trainable_params(shape: ModelShape, method: str, r: int, targets: Sequence[str],
                     modules_to_save: Sequence[str] = (), virtual_tokens: int = 0) -> Trainable:
    """Trainable parameters by kind.

    >>> from multitune.plan.shapes import llama_shape
    >>> s = llama_shape(4096, 14336, 32, 32, 8, 128256)
    >>> trainable_params(s, "lora", 16, resolve_targets(s, "all-linear")).lora  # Llama 3 8B, r=16
    41943040
    >>> trainable_params(s, "prefix_tuning", 0, (), virtual_tokens=20).virtual  # 20 x 32 layers x 2 x 1024
    1310720
    """
    if method == "full":
        return Trainable(base=shape.total_params)
    if method == "prompt_tuning":
        return Trainable(virtual=virtual_tokens * shape.hidden_size)
    if method == "prefix_tuning":
        return Trainable(virtual=virtual_tokens * shape.num_layers * 2 * shape.kv_dim)
    wrapped = [lin for lin in shape.linears if lin.name in targets]
    saved = sum(module_params(shape, m) for m in modules_to_save)
    if method == "ia3":
        return Trainable(ia3=sum((lin.in_features if lin.name in MLP else lin.out_features) * lin.count
                                 for lin in wrapped), saved_modules=saved)
    lora = sum(r * (lin.in_features + lin.out_features) * lin.count for lin in wrapped)
    dora = sum(lin.out_features * lin.count for lin in wrapped) if method == "dora" else 0
    return Trainable(lora=lora, dora=dora, saved_modules=saved)


def weight_bytes(shape: ModelShape, method: str, param_bytes: int, double_quant: bool = True,
                 storage_bytes: int = 1) -> dict[str, float]:
    """The base's weights by dtype. QLoRA: the decoder's linear layers in NF4 (stored as `uint8` or, for
    FSDP, packed into bf16: same bytes), everything else in float32 after peft's cast."""
    if method != "qlora":
        return {_dtype_name(param_bytes): float(shape.total_params * param_bytes)}
    rest = shape.total_params - shape.linear_params
    return {"nf4": nf4_bytes(shape.linear_params, double_quant=double_quant), "float32": float(rest * 4)}


def _dtype_name(n: int) -> str:
    return {4: "float32", 2: "bfloat16"}.get(n, f"{n}-byte")
