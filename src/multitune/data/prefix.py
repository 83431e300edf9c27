"""Shared-prefix rows: the tokens every row of a micro-batch starts with are run once, not once per row.

The rows of one task start with the same tokens: the chat template's header, the task's system prompt and
instruction (24 of banking77's 52 tokens on average with SmolLM2's template). A padded micro-batch runs
them once per row, and pads every row to the longest. Here a micro-batch becomes one row (or a few, each
at most `max_len` long): each group of rows lays its shared prefix (the tokens all its rows start with,
`Group.prefix_len` of them) down once, followed by every row's remaining tokens (its suffix), with no
padding between them. Each suffix token sees its group's shared prefix and the earlier tokens of its own
suffix, nothing else, and position ids continue from the shared prefix in every suffix.

Vocabulary, the same in evaluation (`eval/search.py`, `eval/generate.py`): the *shared prefix* is tokens
run once for several sequences; a count of tokens is `*_len` (`common_prefix_len`, `Group.prefix_len`,
`eval/scoring.shared_prefix_len`); the keys and values of a shared prefix are *slots*
(`eval/pool.KVPool.shared_slots`).

The maths is the padded layout's: causal attention means a prefix token's hidden states never depend on
what follows it, so they are the same in every row that holds it; each suffix token sees exactly the
tokens it saw in its own row, at the same positions. The prefix's gradient is the sum over the rows that
use it, as before. Labels are unchanged: the prefix is cut before any row's first trained token's
predecessor, so no trained position is shared. Only the order of floating-point sums differs
(tests/data/test_prefix.py compares losses and gradients with the padded layout).

It pays when the prefix is a good share of the rows (short classification prompts) and the attention over
the whole row stays small next to the linear layers: `max_len` bounds the dense mask and that attention.

A batch carries its attention mask once, in the one form the model's attention reads (`PrefixMask`, chosen
once per run by `models/attention.py`'s `select_for_shared_prefix`), built by `data/masks.py`:

- `"blocks"`: for block attention (models/attention.py): one small mask per segment (prefix or suffix) and
  the indices of its queries and keys, no (R, 1, T, T) mask;
- `"dense"`: the (R, 1, T, T) boolean mask (True: attend), what sdpa takes (with virtual tokens, which
  block attention has no place for);
- `"additive"`: the same mask as eager attention adds it to the scores, 0 or float32's lowest value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from multitune.data.masks import additive, causal, padded_blocks, segment_mask
from multitune.data.tokenize import IGNORE, Tokenized

ROW_TOKENS = 1024
"""Longest shared-prefix row training lays down (a longer example gets a row of its own): it bounds the
dense mask and the attention over the row, which pays for every pair of tokens in it."""

MIN_PREFIX_LEN = 8
"""Shorter shared prefixes are not worth a group of their own: the rows are laid down whole instead."""

PrefixMask = Literal["blocks", "dense", "additive"]
"""The one form of the attention mask a shared-prefix batch carries (module docstring)."""

BLOCK_KEYS = ("block_q", "block_q_take", "block_k")
"""A `"blocks"` batch's indices (`blocks`), which go to the model as one keyword, `BLOCKS_KWARG`."""

BLOCKS_KWARG = "multitune_blocks"
"""The model keyword transformers hands down to the attention function with the block indices."""


@dataclass(frozen=True)
class Group:
    """Rows (indices into the micro-batch) whose shared prefix is their first `prefix_len` tokens; 0 for a
    row on its own."""

    rows: list[int]
    prefix_len: int


def common_prefix_len(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest start all token lists have in common (0 for none).

    >>> common_prefix_len([[1, 2, 3], [1, 2, 4, 5]]), common_prefix_len([[1, 2, 3], [1, 2], [1, 5]])
    (2, 1)
    >>> common_prefix_len([[7], [8]]), common_prefix_len([])
    (0, 0)
    """
    if not sequences:
        return 0
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != first[i] for s in sequences):
            return i
    return n


def shareable(ex: Tokenized) -> int:
    """How many leading tokens of `ex` may be shared: up to the position before the one whose next token is
    first trained (a shared position's logits are one for all rows, and a trained one has a row's own
    target), and at least one token always stays the row's own."""
    first_trained = next((i for i, label in enumerate(ex.labels) if label != IGNORE), len(ex.labels))
    return max(0, min(first_trained - 1, len(ex.input_ids) - 1))


def prefix_groups(examples: Sequence[Tokenized], min_prefix_len: int = MIN_PREFIX_LEN) -> list[Group]:
    """Group the rows by shared prefix: rows sorted by their tokens, cut where neighbours share fewer than
    `min_prefix_len` tokens; each group shares the start all its rows have (capped by `shareable`).

    >>> a, b, c = (Tokenized(ids, [IGNORE] * (len(ids) - 1) + [ids[-1]], 0) for ids in
    ...            ([1] * 9 + [2, 3], [1] * 9 + [4, 5, 6], [7, 8, 9]))
    >>> prefix_groups([a, c, b])
    [Group(rows=[0, 2], prefix_len=9), Group(rows=[1], prefix_len=0)]
    """
    order = sorted(range(len(examples)), key=lambda i: examples[i].input_ids)
    groups: list[list[int]] = []
    for i in order:
        if groups and common_prefix_len([examples[groups[-1][-1]].input_ids, examples[i].input_ids]) >= min_prefix_len:
            groups[-1].append(i)
        else:
            groups.append([i])
    out = []
    for rows in groups:
        shared = min([shareable(examples[i]) for i in rows] + [common_prefix_len([examples[i].input_ids for i in rows])])
        out.append(Group(sorted(rows), shared if len(rows) > 1 and shared >= min_prefix_len else 0))
    return out


@dataclass
class _Row:
    """One output row being laid down: its tokens and, per token, the segment it attends within."""

    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    tasks: list[int] = field(default_factory=list)
    # the token's own segment: a shared prefix's or a suffix's; PAD_SEGMENT for padding
    segments: list[int] = field(default_factory=list)
    # the shared prefix's segment a suffix token also sees; -1 for prefix tokens and rows alone
    prefix_of: list[int] = field(default_factory=list)
    # (label, task) of the last example's dropped last target, waiting for the next slot (`_lay_down`)
    waiting: tuple[int, int] | None = None


PAD_SEGMENT = -2


def last_target(ex: Tokenized) -> int:
    """Index of the example's last trained token that is some position's target (index >= 1); its own
    input and what follows it feed no loss, so they are not laid down. len(input_ids) when none is."""
    return next((i for i in range(len(ex.labels) - 1, 0, -1) if ex.labels[i] != IGNORE), len(ex.input_ids))


def _layout(examples: Sequence[Tokenized], groups: Sequence[Group], max_len: int, pad_id: int) -> list[_Row]:
    """Lay the groups down into rows of at most `max_len` tokens (a row that is longer on its own gets a
    row of its own), a group's shared prefix again at the start of every row the group continues into. An example takes
    its tokens up to its last target (`_lay_down`) and one slot more, where that target's label lands."""
    rows = [_Row()]
    segment = 0
    for group in groups:
        shared_prefix = examples[group.rows[0]].input_ids[:group.prefix_len]
        prefix_segment = -1  # the shared prefix's segment in the current row; -1 until laid down there
        for i in group.rows:
            ex = examples[i]
            need = last_target(ex) - group.prefix_len + 1 + (group.prefix_len if prefix_segment < 0 else 0)
            if rows[-1].ids and len(rows[-1].ids) + need > max_len:
                _close(rows[-1], pad_id)
                rows.append(_Row())
                prefix_segment = -1
            row = rows[-1]
            if group.prefix_len and prefix_segment < 0:  # the shared prefix, once in this row
                prefix_segment, segment = segment, segment + 1
                _extend(row, shared_prefix, [IGNORE] * group.prefix_len, 0, ex.task_id, prefix_segment, -1)
            _lay_down(row, ex, group.prefix_len, segment, prefix_segment)
            segment += 1
    _close(rows[-1], pad_id)
    return rows


def _lay_down(row: _Row, ex: Tokenized, start: int, segment: int, prefix_segment: int) -> None:
    """Lay `ex` down from token `start` up to its last target (`last_target`), not including it: that
    token's own input feeds no loss. Its label, the target of the token before it, is read at the next slot
    (labels are read shifted): it waits on the row and lands on the next slot laid down (`_extend`), the next
    segment's first token (never a target within its own segment) or the padding slot closing the row."""
    end = last_target(ex)
    _extend(row, ex.input_ids[start:end], ex.labels[start:end], start, ex.task_id, segment, prefix_segment)
    if end < len(ex.input_ids):
        row.waiting = (ex.labels[end], ex.task_id)


def _close(row: _Row, pad_id: int) -> None:
    """End a row: a padding slot to hold the last example's dropped target, when it has one."""
    if row.waiting is not None:
        _extend(row, [pad_id], [IGNORE], 0, -1, PAD_SEGMENT, -1)


def _extend(row: _Row, ids: Sequence[int], labels: Sequence[int], start: int, task: int, segment: int,
            prefix_segment: int) -> None:
    first, n = len(row.ids), len(ids)
    row.ids += ids
    row.labels += labels
    row.positions += range(start, start + n)
    row.tasks += [task] * n
    row.segments += [segment] * n
    row.prefix_of += [prefix_segment] * n
    if row.waiting is not None and n:  # the previous example's dropped last target (`_lay_down`)
        row.labels[first], row.tasks[first] = row.waiting
        row.waiting = None


def row_lengths(examples: Sequence[Tokenized], max_len: int) -> list[int]:
    """The lengths of the rows `shared_prefix_batch` lays these examples down in (what it computes), without
    building tensors: for estimates (`multitune plan`).

    >>> a = Tokenized([1] * 8 + [2, 3, 9], [IGNORE] * 10 + [9], 0)
    >>> row_lengths([a, a, a], max_len=64), len(a.input_ids) * 3
    ([13], 33)
    """
    return [len(row.ids) for row in _layout(examples, prefix_groups(examples), max_len, pad_id=0)]


def shared_prefix_batch(examples: Sequence[Tokenized], pad_id: int, max_len: int,
                        mask: PrefixMask) -> dict[str, torch.Tensor]:
    """A micro-batch of examples as shared-prefix rows (module docstring), carrying its attention mask in
    the one form `mask` names (`attention_inputs`).

    Returns input_ids, labels, position_ids, task_ids (-1 on padding): (R, T), where the label and task at
    t + 1 are position t's target (as everywhere: labels are read shifted); attention_mask (and for
    `"blocks"` the block indices, BLOCK_KEYS); row_tokens: the examples' own tokens (what a padded batch
    counts as real), a 0-dim tensor.

    >>> a = Tokenized([1] * 8 + [2, 3, 9], [IGNORE] * 10 + [9], 0)
    >>> b = Tokenized([1] * 8 + [4, 5, 6, 9], [IGNORE] * 10 + [6, 9], 0)
    >>> out = shared_prefix_batch([a, b], pad_id=0, max_len=64, mask="dense")
    >>> out["input_ids"].tolist(), out["position_ids"].tolist()
    ([[1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 0]], [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 8, 9, 10, 0]])
    >>> out["labels"].tolist()  # a's 9 waits on b's first slot, b's on the padding closing the row
    [[-100, -100, -100, -100, -100, -100, -100, -100, -100, -100, 9, -100, 6, 9]]
    >>> out["attention_mask"][0, 0, 10].int().tolist()  # b's first own token: the prefix and itself
    [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    """
    rows = _layout(examples, prefix_groups(examples), max_len, pad_id)
    width = max(len(r.ids) for r in rows)

    def stacked(values: list[list[int]], fill: int) -> torch.Tensor:  # (R, T), each row filled on the right
        return torch.tensor([v + [fill] * (width - len(v)) for v in values], dtype=torch.long)

    segments = stacked([r.segments for r in rows], PAD_SEGMENT)
    prefix_of = stacked([r.prefix_of for r in rows], -1)
    return {"input_ids": stacked([r.ids for r in rows], pad_id), "labels": stacked([r.labels for r in rows], IGNORE),
            "position_ids": stacked([r.positions for r in rows], 0), "task_ids": stacked([r.tasks for r in rows], -1),
            **attention_inputs(segments, prefix_of, mask),
            "row_tokens": torch.tensor(sum(len(ex.input_ids) for ex in examples))}


def attention_inputs(segments: torch.Tensor, prefix_of: torch.Tensor, mask: PrefixMask) -> dict[str, torch.Tensor]:
    """The batch's attention mask from per-token segments (R, T), built once and in one form (`mask`):
    the blocks' (`blocks`), or the dense (R, 1, T, T) one (`data/masks.segment_mask`: query in dim 2, key
    in dim 3), boolean (True: attend) or additive (`data/masks.additive`, for eager attention)."""
    if mask == "blocks":
        return blocks(segments, prefix_of)
    if mask == "dense":
        return {"attention_mask": segment_mask(segments, prefix_of)}
    if mask == "additive":
        return {"attention_mask": additive(segment_mask(segments, prefix_of))}
    raise ValueError(f"shared-prefix rows carry their mask as one of {PrefixMask.__args__}, not {mask!r} "
                     "(models/attention.py's select_for_shared_prefix says which the model's attention reads)")


def blocks(segments: torch.Tensor, prefix_of: torch.Tensor) -> dict[str, torch.Tensor]:
    """The attention mask as blocks, one per segment (models/attention.py): flat indices (row x T +
    position) of its queries (block_q (N, Q); block_q_take: the real slots of its N x Q) and of its keys, its
    shared prefix's then its own (block_k (N, K)), and its mask, the batch's attention_mask (N, 1, Q, K): the
    shared prefix and the earlier own keys (`data/masks.causal`). A padded slot repeats the block's first
    index and sees the first key only (`data/masks.padded_blocks`); padding tokens are in no block."""
    width = segments.shape[1]
    own: dict[tuple[int, int], list[int]] = {}
    prefix_segment: dict[tuple[int, int], int] = {}
    for r, (seg_row, pre_row) in enumerate(zip(segments.tolist(), prefix_of.tolist(), strict=True)):
        for t, (seg, pre) in enumerate(zip(seg_row, pre_row, strict=True)):
            if seg != PAD_SEGMENT:
                own.setdefault((r, seg), []).append(r * width + t)
                prefix_segment[(r, seg)] = pre
    queries = list(own.values())
    keys = [(own[(r, prefix_segment[(r, seg)])] if prefix_segment[(r, seg)] >= 0 else []) + own[(r, seg)]
            for (r, seg) in own]
    q_len, k_len = max(map(len, queries)), max(map(len, keys))
    block_q = torch.tensor([q + [q[0]] * (q_len - len(q)) for q in queries])
    block_k = torch.tensor([k + [k[0]] * (k_len - len(k)) for k in keys])
    take = torch.tensor([b * q_len + j for b, q in enumerate(queries) for j in range(len(q))])
    mask = padded_blocks([causal(len(q), len(k) - len(q)) for q, k in zip(queries, keys, strict=True)], q_len, k_len)
    return {"attention_mask": mask, "block_q": block_q, "block_q_take": take, "block_k": block_k}
