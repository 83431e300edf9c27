"""The offline tiny model: a small Llama and a byte-level BPE tokenizer built from the run's own texts.

No machine we test on can download weights, so `model.name: tiny` builds a real `LlamaForCausalLM`
(grouped-query attention, RoPE, RMSNorm, SwiGLU) and a Llama-3-style tokenizer and chat template, and
saves both in Hugging Face format. Everything downstream loads them with `from_pretrained(path)` exactly
as it loads a Hub model, so tests exercise the real path.

Adapters on a random base. A randomly initialised base gives a low-rank update nothing to steer: LoRA
alone stays at chance (measured: loss flat at 3.1 on the demo quiz after 100 steps). Two remedies, both
measured on the quickstart's demo tasks with this model (4 layers, width 256, 3.9M parameters):

- a short language-model pre-training on the run's training inputs (never the answers), cached under a
  hash of what went into it (`pretrain_steps`): after 150 steps, LoRA reached 0.99 on claims and 0.89 on
  the quiz but 0.13 on the 12 intents, and even full fine-tuning of that base on intents alone reached
  only 0.12 after 60 steps where the random base reached 0.61. A few hundred steps of pre-training teach
  local n-gram attention, which then resists learning to read the text from the answer position.
- training the embeddings and the output head beside the adapters (`adapter.modules_to_save:
  [embed_tokens, lm_head]`) on the random base: 0.93 on intents alone after 60 steps, 1.0 on claims.

So the quickstart uses the second, and pre-training stays available (off by default) for experiments.
Neither stands in for a real pretrained model: the tiny model proves the pipeline (templates, masks,
loss, scoring, saving, loading), not the method's quality, which `docs/benchmarks.md` measures on real
data.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from multitune.config.schema import TinyModelConfig
from multitune.data.collate import model_inputs, pad_batch
from multitune.data.tokenize import Tokenized
from multitune.io import cache_root
from multitune.tasks.base import Message

BUILD_VERSION = 2  # bump when the build below changes, so stale caches are not reused
MARKER = "multitune-tiny.json"

BOS, EOS, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, "<|start_header_id|>", "<|end_header_id|>", EOT, PAD]
# Llama 3's pre-tokenisation pattern: newlines are their own pieces, so "\n\n" before an answer
# tokenises the same whether or not the answer follows.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def build_or_load(cfg: TinyModelConfig, conversations: Sequence[Sequence[Message]], seed: int) -> Path:
    """Return the folder of a tiny model built for these training conversations, building it if needed.

    `conversations` are the training examples' messages: all of their text trains the tokenizer, their
    prompts (not answers) pre-train the model. The folder loads with `AutoModelForCausalLM` /
    `AutoTokenizer.from_pretrained`.
    """
    key = _cache_key(cfg, conversations, seed)
    path = cache_root() / "tiny" / key
    if (path / MARKER).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{key}."))
    try:
        tokenizer = train_tokenizer(cfg.vocab_size, _all_texts(conversations))
        model = init_model(cfg, tokenizer, seed)
        pretrain(model, tokenizer, _user_texts(conversations), cfg, seed)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"version": BUILD_VERSION, "config": cfg.model_dump()}, indent=2))
        try:
            os.replace(tmp, path)
        except OSError:  # another process finished the same build first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _cache_key(cfg: TinyModelConfig, conversations: Sequence[Sequence[Message]], seed: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": BUILD_VERSION, "cfg": cfg.model_dump(), "seed": seed}, sort_keys=True).encode())
    for conv in conversations:
        h.update(json.dumps(list(conv), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:20]


def _all_texts(conversations: Sequence[Sequence[Message]]) -> list[str]:
    return [m["content"] for conv in conversations for m in conv]


def _user_texts(conversations: Sequence[Sequence[Message]]) -> list[str]:
    return [m["content"] for conv in conversations for m in conv if m["role"] == "user"]


def _prompts(tokenizer, conversations: Sequence[Sequence[Message]]) -> list[str]:
    """Each conversation rendered up to its first answer (exclusive): what the base may learn from."""
    out = []
    for conv in conversations:
        first_answer = next((i for i, m in enumerate(conv) if m["role"] == "assistant"), len(conv))
        out.append(tokenizer.apply_chat_template(list(conv[:first_answer]), tokenize=False,
                                                 add_generation_prompt=True))
    return out


def train_tokenizer(vocab_size: int, texts: Sequence[str]):
    """A byte-level BPE tokenizer with Llama 3's pre-tokenisation, special tokens and chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOT, pad_token=PAD, chat_template=CHAT_TEMPLATE,
        model_max_length=1 << 20,
    )


def init_model(cfg: TinyModelConfig, tokenizer, seed: int):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(EOT),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id, tokenizer.convert_tokens_to_ids(EOS)],
        pad_token_id=config.pad_token_id,
    )
    return model


def pretrain(model, tokenizer, texts: Sequence[str], cfg: TinyModelConfig, seed: int) -> None:
    """A short causal-LM pre-training on `texts` (AdamW, warmup then cosine decay), in place."""
    if cfg.pretrain_steps == 0 or not texts:
        return
    ids = [x[: cfg.max_position_embeddings] for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    rng = random.Random(f"{seed}:tiny-pretrain")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_learning_rate, weight_decay=0.0)
    warmup = max(1, cfg.pretrain_steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.pretrain_steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model.train()
    for _ in range(cfg.pretrain_steps):
        rows = [ids[rng.randrange(len(ids))] for _ in range(cfg.pretrain_batch_size)]
        batch = pad_batch([Tokenized(row, row, 0) for row in rows], tokenizer.pad_token_id)  # every token trained
        loss = model(**model_inputs(batch), labels=batch["labels"], use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
