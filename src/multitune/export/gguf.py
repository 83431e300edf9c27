"""Write a merged Llama-family model and its tokenizer as one GGUF file, the format llama.cpp and Ollama run.

The file holds what llama.cpp needs and nothing else has to come with it: the architecture's hyper-
parameters under `llama.*`, every weight under llama.cpp's tensor names, the tokenizer (`gguf_vocab`) and the
chat template. Two things differ from the Hugging Face layout and are easy to get wrong:

- llama.cpp applies rotary embeddings to adjacent pairs of a head's dimensions, transformers to its two
  halves, so llama.cpp's converter permutes the rows of every head of `q_proj` and `k_proj`
  (`permute_qk`); transformers' GGUF loader undoes exactly that permutation when it reads the file back.
- A tied output head has no tensor of its own: `output.weight` is left out and llama.cpp reuses
  `token_embd.weight`, which is also how a reader tells the head is tied.

Llama 3.1-3.3's rotary scaling (`rope_type: llama3`) is written as llama.cpp's converter writes it: one
`rope_freqs.weight` tensor of per-frequency divisors (`llama3_rope_factors`).

Norm weights stay float32 in every type, as llama.cpp's own converter keeps them (they are 1-D and small).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multitune.errors import UserError

# --type: (ggml tensor type of the 2-D weights, the file type llama.cpp reports)
TYPES = {"f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0")}
ARCHITECTURE = "llama"
SUPPORTED_MODEL_TYPES = ("llama",)  # transformers' config.model_type values written as llama.cpp's `llama`
# Per-layer Hugging Face module -> llama.cpp tensor name (blk.N.<name>.weight).
LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
GLOBAL_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}


@dataclass(frozen=True)
class GgufWritten:
    path: Path
    type: str  # f16, bf16 or q8_0
    tensor_count: int
    tied_output: bool  # the head is the embedding: no output.weight in the file
    kept_f16: list[str]  # 2-D tensors written f16 because their rows do not fill whole q8_0 blocks


def check_architecture(config: Any) -> None:
    """Refuse, with a `UserError` naming it, any model llama.cpp's `llama` architecture would not run as is."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UserError(f"GGUF export supports the Llama architecture only; this model is {model_type!r} "
                        f"({', '.join(getattr(config, 'architectures', None) or ['unknown class'])})",
                        fix="export a run whose base is a Llama-family model (Llama 2/3.x, SmolLM2, the tiny "
                            "model), or use `multitune merge` and llama.cpp's convert_hf_to_gguf.py")
    rope = rope_parameters(config)
    problems = [f"{flag}: true" for flag in ("attention_bias", "mlp_bias") if getattr(config, flag, False)]
    if rope["rope_type"] not in ("default", "llama3"):
        problems.append(f"rope scaling {rope['rope_type']!r}")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config.hidden_act!r}")
    if problems:
        raise UserError(f"this Llama model has {', '.join(problems)}, which the GGUF export does not write yet",
                        fix="use `multitune merge` and llama.cpp's convert_hf_to_gguf.py for this model")


def rope_parameters(config: Any) -> dict[str, Any]:
    """{"rope_theta", "rope_type"} from a transformers 5 config (`rope_parameters`) or an older one."""
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    return params


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def llama3_rope_factors(config: Any) -> np.ndarray:
    """llama.cpp's `rope_freqs.weight` for Llama 3.1's rotary scaling: the divisor of each of the head's
    head_dim / 2 rotary frequencies (1 for short wavelengths, `factor` for long ones, smoothed between), so
    that the default frequencies divided by these are transformers' llama3 frequencies."""
    p = rope_parameters(config)
    dim = head_dim(config)
    freqs = 1.0 / (p["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_context = p["original_max_position_embeddings"]
    wavelen = 2 * np.pi / freqs.double().numpy()
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_context / high, 1.0,
                       np.where(wavelen > old_context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def permute_qk(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row permutation of a (n_head * head_dim, in) q or k projection: within each head, the
    rows of the first and second halves (transformers' rotate-half pairs) become interleaved pairs.

    >>> permute_qk(np.arange(4).reshape(4, 1), 1)[:, 0].tolist()  # rows (0, 1 | 2, 3) -> pairs (0, 2), (1, 3)
    [0, 2, 1, 3]
    """
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama_tensors(state_dict: dict[str, torch.Tensor], config: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) for every weight, q/k permuted, the head left out when tied."""
    tied = "lm_head.weight" not in state_dict or torch.equal(state_dict["lm_head.weight"],
                                                             state_dict["model.embed_tokens.weight"])
    for key, tensor in state_dict.items():
        name = gguf_name(key)
        if name is None:
            raise UserError(f"the model has a weight {key!r} that llama.cpp's llama architecture has no place for",
                            fix="use `multitune merge` and llama.cpp's convert_hf_to_gguf.py for this model")
        if name == "output.weight" and tied:
            continue
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith(".attn_q.weight"):
            array = permute_qk(array, config.num_attention_heads)
        elif name.endswith(".attn_k.weight"):
            array = permute_qk(array, config.num_key_value_heads)
        yield name, array


def gguf_name(key: str) -> str | None:
    """llama.cpp's name for a transformers Llama weight, or None when it has none.

    >>> gguf_name("model.layers.3.self_attn.k_proj.weight"), gguf_name("lm_head.weight")
    ('blk.3.attn_k.weight', 'output.weight')
    """
    module, _, suffix = key.rpartition(".")
    if suffix != "weight":
        return None
    if module in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[module]}.weight"
    parts = module.split(".", 3)  # model, layers, N, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in LAYER_TENSORS:
        return f"blk.{parts[2]}.{LAYER_TENSORS[parts[3]]}.weight"
    return None


def write_gguf(model: Any, tokenizer: Any, path: str | Path, type: str = "f16", name: str | None = None
               ) -> GgufWritten:
    """Write `model` (a transformers Llama, merged) and `tokenizer` to `path`, complete or absent.

    `type`: f16 (default), bf16 or q8_0 for the 2-D weights. Raises `UserError` for another architecture
    or a tokenizer llama.cpp could not run exactly.
    """

    from multitune.export.gguf_vocab import write_vocab

    if type not in TYPES:
        raise UserError(f"unknown GGUF type {type!r}", fix=f"use one of {', '.join(TYPES)}")
    config = model.config
    check_architecture(config)
    path = Path(path)
    with gguf_file(path) as writer:
        _write_hyperparameters(writer, config, name or path.stem, type)
        write_vocab(writer, tokenizer, config.vocab_size)
        written, kept_f16, tied = _add_tensors(writer, model.state_dict(), config, type)
        if rope_parameters(config)["rope_type"] == "llama3":
            writer.add_tensor("rope_freqs.weight", llama3_rope_factors(config))
            written += 1
    return GgufWritten(path, type, written, tied, kept_f16)


@contextlib.contextmanager
def gguf_file(path: Path) -> Iterator[Any]:
    """A `gguf.GGUFWriter` for `path`, written whole when the block ends and renamed into place: `path` is
    complete or absent (a failure leaves no partial file and keeps an earlier one)."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURE)
        yield writer
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_hyperparameters(writer: Any, config: Any, name: str, type: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim(config))
    writer.add_rope_freq_base(float(rope_parameters(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:  # llama.cpp assumes this otherwise
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    writer.add_file_type(gguf.LlamaFileType[TYPES[type][1]])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tensors(writer: Any, state_dict: dict[str, torch.Tensor], config: Any, type: str
                 ) -> tuple[int, list[str], bool]:
    """Add every tensor in `type`; returns (count, names kept f16, whether the head is tied)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[TYPES[type][0]]
    count, kept_f16, has_output = 0, [], False
    for name, array in llama_tensors(state_dict, config):
        count += 1
        has_output |= name == "output.weight"
        if array.ndim == 1:
            writer.add_tensor(name, array)  # float32
        elif qtype == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        elif qtype == gguf.GGMLQuantizationType.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
            kept_f16.append(name)  # llama.cpp's converter falls back the same way
            writer.add_tensor(name, array.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
    return count, kept_f16, not has_output
