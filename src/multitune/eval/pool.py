"""Packed forward passes over a key/value pool: the engine under scoring, the search and greedy generation.

Evaluation feeds a model many short, unrelated pieces of sequences: each row's prompt, a few nodes of its
candidate tree per search round, one token per row and decoding step. A padded batch pays for every
padding position in every linear layer (nearly all of the FLOPs), and its rows wait for its slowest.
Here a forward pass is one flat sequence of exactly the tokens that must run, from any rows at any stage
(`Segment`s): no linear layer computes padding, and a row that is done leaves while others join.

Rows still attend only to their own tokens. Every token's keys and values go into a slot of a pool that
outlives the pass (`KVPool`, in place of transformers' cache: the forward runs with `use_cache=False`),
and the attention function registered here computes each row's attention on the slots every row sees
(`KVPool.shared_slots`: the shared prefix of the rows' prompts, run once by `drive`) and the slots it owns
(its prompt, its fed nodes or generated tokens) under a small mask per row (`data/masks.py`). Padding
exists only inside attention, where rows of similar sizes are grouped so little is computed for nothing.

Keys a model puts in front of the tokens it is given (the virtual tokens of prompt and prefix tuning,
`models/virtual.py`, which come as a cache) go into shared slots too (`KVPool.virtual_slots`).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from multitune.data.masks import causal, padded_blocks, with_leading_keys
from multitune.eval.lockstep import SOLO, Lockstep, idle_forward
from multitune.models import attention

NAME = "multitune_pool"
KWARG = "multitune_pool"  # the model keyword that carries a `Packed` pass down to attention
# New rows wait while the pool holds this many keys per token of a pass (SmolLM2 in float32: 46 KiB a key,
# 750 MiB at 512 tokens a pass); rows under way never wait for memory.
SLOTS_PER_PASS_TOKEN = 32


@dataclass
class Work:
    """What evaluation computed, in machine-independent counts (`bench/eval/smollm2.py` prints them)."""

    forwards: int = 0  # packed passes run, idle passes of lockstep included
    idle_forwards: int = 0  # one-token passes run only to keep in step with other processes
    positions: int = 0  # tokens through the linear layers (no padding: every one is needed)
    logit_positions: int = 0  # of which the head and the log-softmax ran on
    attention_pairs: int = 0  # (query, key) pairs attention computed, padding included
    attention_needed: int = 0  # of which a query attends to its key's row at all
    rows: int = 0  # rows that finished
    needed_positions: int = 0  # the least any exact method computes: shared prefix once, then `Row.needed`
    needed_logits: int = 0  # of which need next-token logits

    def add(self, other: Work) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class KVPool:
    """Key and value slots for every layer: (slots, kv_heads, head_dim) tensors made on first use and grown
    by doubling; a slot is owned by one row (or shared) until that row frees it."""

    shared_slots: list[int] = field(default_factory=list)  # slots every row sees: virtual tokens, shared prefix
    virtual_slots: list[int] = field(default_factory=list)  # of which the model's own leading keys
    capacity: int = 0
    _free: list[int] = field(default_factory=list)
    _keys: dict[int, torch.Tensor] = field(default_factory=dict)
    _values: dict[int, torch.Tensor] = field(default_factory=dict)

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            grown = max(2 * self.capacity, self.capacity + n - len(self._free), 256)
            self._free = list(range(grown - 1, self.capacity - 1, -1)) + self._free
            self.capacity = grown
        taken = self._free[-n:] if n else []
        del self._free[len(self._free) - n:]
        return taken[::-1]

    def free(self, slots: Sequence[int]) -> None:
        self._free.extend(reversed(slots))

    @property
    def in_use(self) -> int:
        return self.capacity - len(self._free)

    def layer(self, index: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s (keys, values), at the current capacity, each stored in the dtype the layer gives
        it: `key`, `value` (1, kv_heads, T, head_dim). Under autocast they differ (the rotary embedding
        returns float32 keys beside bfloat16 values)."""
        keys = self._keys.get(index)
        if keys is None or keys.shape[0] < self.capacity:
            for store, like in ((self._keys, key), (self._values, value)):
                old, new = store.get(index), like.new_zeros((self.capacity, like.shape[1], like.shape[3]))
                if old is not None:
                    new[: old.shape[0]] = old
                store[index] = new
        return self._keys[index], self._values[index]


@dataclass
class Segment:
    """One row's new tokens in a packed pass. Their slots are the last `len(tokens)` of `keys`."""

    keys: list[int]  # the row's own slots, in order, this segment's included
    tokens: list[int]
    positions: list[int]
    mask: torch.Tensor  # (len(tokens), len(keys)) bool: which of the row's own keys each new token sees
    logits: list[int]  # which of `tokens` need next-token logits

    def __post_init__(self) -> None:
        assert self.mask.shape == (len(self.tokens), len(self.keys)), (self.mask.shape, len(self.tokens), len(self.keys))


@dataclass(frozen=True)
class _Blocks:
    """Segments attended together, a block each (as a shared-prefix row's, `data/prefix.blocks`): queries
    (R, Q) and keys (R, K) padded to the largest block's."""

    flat: torch.Tensor  # (n,) flat positions of the real queries, segment by segment
    q_index: torch.Tensor  # (R x Q,) flat position per query slot (padding: any)
    q_take: torch.Tensor  # (n,) which query slots are real
    k_index: torch.Tensor  # (R x K,) pool slot per key column (padding: any)
    mask: torch.Tensor  # (R, 1, Q, K) bool


@dataclass(frozen=True)
class Packed:
    """One packed pass as attention needs it (built by `pack`)."""

    pool: KVPool
    write: torch.Tensor  # (T,) the slot of each new token
    blocks: list[_Blocks]
    span: int  # the largest position in the pass, plus one

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float | None) -> torch.Tensor:
        """query (1, H, T, D), key and value (1, Hkv, V + T, D) with V leading virtual keys -> (1, T, H, D)."""
        _, heads, width, dim = query.shape
        kv_heads = key.shape[1]
        keys, values = self.pool.layer(layer, key, value)
        extra = key.shape[2] - width
        if extra:  # the model's own leading keys (virtual tokens): the same every pass
            slots = torch.tensor(self.pool.virtual_slots, device=keys.device)
            keys.index_copy_(0, slots, key[0, :, :extra].transpose(0, 1))
            values.index_copy_(0, slots, value[0, :, :extra].transpose(0, 1))
        keys.index_copy_(0, self.write, key[0, :, extra:].transpose(0, 1))
        values.index_copy_(0, self.write, value[0, :, extra:].transpose(0, 1))
        flat_q = query[0].transpose(0, 1)  # (T, H, D)
        out: torch.Tensor | None = None  # in attention's output dtype (autocast's, under autocast)
        for b in self.blocks:
            rows, q_len, k_len = b.mask.shape[0], b.mask.shape[2], b.mask.shape[3]
            q = flat_q.index_select(0, b.q_index).view(rows, q_len, heads, dim).transpose(1, 2)
            k = keys.index_select(0, b.k_index).view(rows, k_len, kv_heads, dim).transpose(1, 2)
            v = values.index_select(0, b.k_index).view(rows, k_len, kv_heads, dim).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=b.mask, scale=scaling, enable_gqa=heads != kv_heads)
            if out is None:
                out = o.new_empty((width, heads, dim))
            out.index_copy_(0, b.flat, o.transpose(1, 2).reshape(rows * q_len, heads, dim).index_select(0, b.q_take))
        assert out is not None, "a packed pass has at least one block"
        return out[None]


class Row(Protocol):
    """A row `drive` runs: it asks for tokens, is fed them in a segment, and learns from their logits."""

    keys: list[int]  # the pool slots it owns

    def wants(self) -> int:
        """Tokens its next segment holds; 0 when the row is done."""
        ...

    def feed(self, pool: KVPool) -> Segment:
        """Its next segment, with new slots from `pool` appended to its keys."""
        ...

    def needed(self) -> tuple[int, int]:
        """Once done: (positions, logit positions) that any exact method had to compute for this row after
        the shared prefix, whatever the passes (`Work.needed_positions`)."""
        ...


Reader = Callable[[torch.Tensor, list[tuple[Any, int]]], None]  # (logits (K, V), [(row, its first logits row)])


def drive(model: Any, rows: Sequence[Row], shared_prefix: Sequence[int], read: Reader, *, tokens_per_pass: int,
          step: Lockstep = SOLO, work: Work | None = None) -> Iterator[Any]:
    """Run `rows` to the end in packed passes of about `tokens_per_pass` tokens, yielding each row when it
    is done. The rows' prompts start after `shared_prefix` (run first, alone, into slots every row sees:
    `KVPool.shared_slots`). Rows already under way
    go first, new rows fill the rest of a pass, in the order given, while the pool holds fewer than
    SLOTS_PER_PASS_TOKEN x `tokens_per_pass` keys; `read` learns from each pass's logits.

    With other processes (`step`) the passes go in lockstep: before each, the processes agree whether any
    still has one to run; one with none runs an idle pass (`eval/lockstep.py`)."""
    work = work if work is not None else Work()
    device = next(model.parameters()).device
    pool = KVPool()
    pool.virtual_slots = pool.alloc(int(getattr(model, "n_virtual", 0) or 0))
    pool.shared_slots = list(pool.virtual_slots)
    n = len(shared_prefix)
    head = [Segment(pool.alloc(n), list(shared_prefix), list(range(n)), causal(n), [])] if n else []
    waiting, active = deque(rows), []
    work.needed_positions += n
    # Selected once for the whole drive (the switch walks the model's modules), given back when it ends.
    with pooled(model):
        while True:
            if head:
                segments, fed = head, []
            else:
                segments, fed = _plan(pool, waiting, active, tokens_per_pass, SLOTS_PER_PASS_TOKEN * tokens_per_pass)
            if not step.any(bool(segments)):
                return
            if not segments:
                idle_forward(model)
                work.forwards += 1
                work.idle_forwards += 1
                continue
            kwargs, _ = pack(pool, segments, work, device)
            with torch.no_grad():
                logits = model(**kwargs).logits[0]  # (K, V): the wanted positions only
            if head:
                pool.shared_slots += head[0].keys
                head = []
                continue
            read(logits, fed)
            for row, _ in fed:
                if row.wants() == 0:
                    active.remove(row)
                    pool.free(row.keys)
                    work.rows += 1
                    positions, logit_rows = row.needed()
                    work.needed_positions += positions
                    work.needed_logits += logit_rows
                    yield row


def _plan(pool: KVPool, waiting: deque[Any], active: list[Any], budget: int,
          max_slots: int) -> tuple[list[Segment], list[tuple[Any, int]]]:
    """The next pass: rows under way first, then new rows while the budget lasts (a row too large for any
    budget goes alone) and the pool is not full; each fed row with the index of its first logits row."""
    segments: list[Segment] = []
    fed: list[tuple[Any, int]] = []
    used = logits = 0

    def add(row: Any) -> None:
        nonlocal used, logits
        seg = row.feed(pool)
        segments.append(seg)
        fed.append((row, logits))
        used += len(seg.tokens)
        logits += len(seg.logits)

    for row in active:
        n = row.wants()
        if n and (not used or used + n <= budget):
            add(row)
    while waiting and (not used or used + waiting[0].wants() <= budget) and (not active or pool.in_use < max_slots):
        active.append(waiting.popleft())
        add(active[-1])
    return segments, fed


def pack(pool: KVPool, segments: Sequence[Segment], work: Work, device: Any) -> tuple[dict[str, Any], list[int]]:
    """The forward's keyword arguments for `segments` laid end to end, and the flat position of every token
    whose logits are wanted (segment by segment, in each segment's `logits` order)."""
    starts, wanted, total = [], [], 0
    for s in segments:
        starts.append(total)
        wanted += [total + i for i in s.logits]
        total += len(s.tokens)
    shared = len(pool.shared_slots)
    blocks = [_blocks(pool, [segments[i] for i in g], [starts[i] for i in g], work, device)
              for g in _by_size(segments, shared)]
    ids = torch.tensor([t for s in segments for t in s.tokens], device=device)[None]
    positions = torch.tensor([p for s in segments for p in s.positions], device=device)[None]
    write = torch.tensor([k for s in segments for k in s.keys[len(s.keys) - len(s.tokens):]], device=device)
    work.forwards += 1
    work.positions += total
    work.logit_positions += len(wanted)
    keep = torch.tensor(wanted or [total - 1], device=device)
    kwargs = {"input_ids": ids, "position_ids": positions, "use_cache": False, "logits_to_keep": keep,
              KWARG: Packed(pool, write, blocks, int(positions.max()) + 1)}
    return kwargs, wanted


def _by_size(segments: Sequence[Segment], shared: int) -> list[list[int]]:
    """Segments grouped for attention: sorted by their keys, a group closes when padding would make it cost
    more than 1.5 times its real pairs (and 8 times at most in all)."""
    order = sorted(range(len(segments)), key=lambda i: (len(segments[i].keys), len(segments[i].tokens)))
    groups: list[list[int]] = []
    q = k = real = 0
    for i in order:
        s = segments[i]
        nq, nk = max(q, len(s.tokens)), max(k, shared + len(s.keys))
        pairs = len(s.tokens) * (shared + len(s.keys))
        if groups and len(groups) < 8 and (len(groups[-1]) + 1) * nq * nk > 1.5 * (real + pairs):
            groups.append([])
            nq, nk, real = len(s.tokens), shared + len(s.keys), 0
        if not groups:
            groups.append([])
        groups[-1].append(i)
        q, k, real = nq, nk, real + pairs
    return groups


def _blocks(pool: KVPool, segments: Sequence[Segment], starts: Sequence[int], work: Work, device: Any) -> _Blocks:
    """The attention of `segments` (starting at `starts` in the pass) as one batch: per segment, its queries
    and as keys the shared slots then its own, under the shared slots (all seen) beside its own mask."""
    shared = len(pool.shared_slots)
    rows = len(segments)
    q_len = max(len(s.tokens) for s in segments)
    k_len = shared + max(len(s.keys) for s in segments)
    q_index = torch.zeros((rows, q_len), dtype=torch.long)
    k_index = torch.zeros((rows, k_len), dtype=torch.long)
    k_index[:, :shared] = torch.tensor(pool.shared_slots, dtype=torch.long)
    take, flat = [], []
    for r, (s, start) in enumerate(zip(segments, starts, strict=True)):
        n, k = len(s.tokens), len(s.keys)
        q_index[r, :n] = torch.arange(start, start + n)
        k_index[r, shared : shared + k] = torch.tensor(s.keys, dtype=torch.long)
        take += range(r * q_len, r * q_len + n)
        flat += range(start, start + n)
        work.attention_needed += n * (shared + k)
    work.attention_pairs += rows * q_len * k_len
    mask = padded_blocks([with_leading_keys(s.mask, shared) for s in segments], q_len, k_len)
    return _Blocks(torch.tensor(flat, device=device), q_index.view(-1).to(device), torch.tensor(take, device=device),
                   k_index.view(-1).to(device), mask.to(device))


def pool_attention(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
    scaling: float | None = None, dropout: float = 0.0, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A transformers attention function: a packed pass (`kwargs[KWARG]`) attends through the pool; any
    other pass (lockstep's idle one) is transformers' sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packed = kwargs.pop(KWARG, None)
    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    window = kwargs.get("sliding_window")
    if kwargs.get("softcap") or kwargs.get("s_aux") is not None or (window and packed.span > window):
        raise NotImplementedError(f"{type(module).__name__}: packed evaluation passes compute plain softmax "
                                  "attention, without soft-capping, sinks or a sliding window shorter than a row")
    return packed.attend(module.layer_idx, query, key, value, scaling), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    """Packed passes carry their masks themselves: transformers builds none."""
    return None


def register() -> None:
    """Make `NAME` an attention implementation transformers knows (a process-wide table; registering again
    changes nothing), with no mask of transformers' making: packed passes carry their own."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, pool_attention)
    AttentionMaskInterface.register(NAME, _no_mask)


def supported(model: Any) -> bool:
    """Whether packed passes can run `model`: a transformers model whose attention is an attention function
    (`AttentionInterface`); `pool_attention` refuses the variants it does not compute (soft-capping,
    attention sinks, a sliding window shorter than the rows)."""
    try:
        return hasattr(attention.transformers_model(model).config, "_attn_implementation")
    except TypeError:
        return False


@contextlib.contextmanager
def pooled(model: Any) -> Iterator[None]:
    """While inside, `model`'s attention takes the pool path for packed passes (others run as sdpa), selected
    and given back through transformers' public `set_attn_implementation`."""
    inner = attention.transformers_model(model)
    register()
    before = inner.config._attn_implementation
    inner.set_attn_implementation(NAME)
    if inner.config._attn_implementation != NAME:  # transformers declined (it warned): packed passes would be wrong
        raise RuntimeError(f"{type(inner).__name__} cannot switch its attention implementation, which packed "
                           "evaluation passes need")
    try:
        yield
    finally:
        inner.set_attn_implementation(before)


def logprobs_at(logits: torch.Tensor, rows: Sequence[int], tokens: Sequence[int]) -> list[float]:
    """log P(tokens[i] | position rows[i]) from next-token logits (K, V): one transfer to the host."""
    if not rows:
        return []
    logits = logits.float()
    index = torch.tensor(list(rows), device=logits.device)
    picked = logits[index, torch.tensor(list(tokens), device=logits.device)]
    return (picked - torch.logsumexp(logits, dim=-1).index_select(0, index)).tolist()
