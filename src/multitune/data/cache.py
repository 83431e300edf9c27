"""Tokenised examples cached on disk with `datasets`' own machinery: a second run with the same data,
template and tokenizer reads the tokens back instead of rendering the chat template again.

The cache key is a `datasets` fingerprint (`Hasher`) of everything the tokens depend on: the rendered
conversations (so the source rows, the task's columns, system prompt and prompt template), the tokenizer
(its vocabulary, merges, normalisation, special tokens and chat template), `max_seq_len`, the truncation
policy and `CACHE_VERSION`. Change any of them and the key changes; `Dataset.map` then finds no file
under that key and tokenises. Files live in `$MULTITUNE_CACHE/tokenized/` (default
`~/.cache/multitune/tokenized/`) and can be deleted at any time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from multitune.data.tokenize import Tokenized, TokenizeStats, tokenize_one
from multitune.io import cache_root
from multitune.tasks.base import Example

CACHE_VERSION = 2  # bump when tokenisation changes what it produces for the same inputs


def cache_dir() -> Path:
    return cache_root() / "tokenized"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides a tokenizer's output: its serialised pipeline (vocabulary, merges,
    normalisers, pre-tokenisers, added tokens) and chat template, whatever folder it was loaded from."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    pipeline = backend.to_str() if backend is not None else Hasher.hash(tokenizer)
    return Hasher.hash([type(tokenizer).__name__, pipeline, tokenizer.chat_template, sorted(tokenizer.special_tokens_map.items())])


def tokenize_cached(
    tokenizer: Any, examples: Sequence[Example], task_id: int, max_seq_len: int, policy: str,
    tokenizer_key: str | None = None,
) -> tuple[list[Tokenized], TokenizeStats, bool]:
    """`tokenize_examples` through the cache. Returns the kept examples, the stats (recomputed from the
    cached statuses, so a cache hit reports the same counts), and whether the cache was hit."""
    import datasets
    from datasets.fingerprint import Hasher

    stats = TokenizeStats()
    if not examples:
        return [], stats, False
    tokenizer_key = tokenizer_key or tokenizer_fingerprint(tokenizer)
    key = Hasher.hash([CACHE_VERSION, tokenizer_key, max_seq_len, policy, [ex.messages for ex in examples]])
    path = cache_dir() / f"{key}.arrow"
    hit = path.is_file() and datasets.is_caching_enabled()
    path.parent.mkdir(parents=True, exist_ok=True)

    def encode(batch: dict[str, list[int]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "status": []}
        for i in batch["index"]:
            status, tok = tokenize_one(tokenizer, examples[i], task_id, max_seq_len, policy)
            out["input_ids"].append(tok.input_ids if tok else [])
            out["labels"].append(tok.labels if tok else [])
            out["status"].append(status)
        return out

    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")),
                                  "labels": datasets.List(datasets.Value("int32")), "status": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"index": list(range(len(examples)))}).map(
        encode, batched=True, batch_size=1000, remove_columns=["index"], features=features,
        cache_file_name=str(path), new_fingerprint=key, desc=f"tokenizing {examples[0].task}",
    ).data.table
    out: list[Tokenized] = []
    columns = (table.column(c).to_pylist() for c in ("status", "input_ids", "labels"))
    for status, ids, labels in zip(*columns, strict=True):
        tok = Tokenized(ids, labels, task_id) if status in ("kept", "truncated") else None
        stats.count(status, tok)
        if tok is not None:
            out.append(tok)
    return out, stats, hit
