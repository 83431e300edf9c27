"""The most likely candidate without running every candidate: exact best-first search over the tree of
candidate prefixes.

A prefix's log-likelihood bounds that of every candidate through it (more tokens only add log-
probabilities <= 0). The search runs the prompts once, then in rounds feeds, per prompt, the top of the
subtree under the prefix node with the highest bound (tree attention, as in `scoring.py`), the rest of the
gold answer's path (for the exact validation loss), and, once some candidate is complete, the subtree
of every node whose bound is at least the best complete score. It stops when no node can still beat
(or tie) the best complete candidate. So the winner, its log-likelihood
and the gold answer's are exactly those of running every candidate; a candidate the search never
completed is provably below the winner and gets -inf.

For a trained model that is a round or two after the prompt, feeding a few nodes under the likely first
token instead of every token of every label (77 banking labels: ~207 nodes), where generation needs a
decoding step per token: on 300 banking77 rows with the trained tiny model, 76 forward calls and 9.4k
tokens against greedy generation's 136 calls and 11.6k tokens. Rows whose numbers of nodes differ a lot
are split into groups rather than padded. For a model with no preference (untrained) the search
degrades to the whole tree, fed level by level.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from multitune.eval.lockstep import SOLO, Lockstep, idle_forward
from multitune.eval.scoring import CandidateTrie, Scores, additive_mask, expanded_cache
from multitune.models.cache import cache_kwargs, returned_cache

SUBTREE_CAP = 4  # nodes of the likeliest subtree fed at once: fewer rounds against more padding


@dataclass
class _Row:
    """One prompt's search state. Node bounds are known once the node's parent has run."""

    trie: CandidateTrie
    gold: int | None
    length: int  # tokens in the full prompt
    offset: int  # left padding of the prompt suffix
    bound: dict[int, float] = field(default_factory=dict)  # node -> log-likelihood of its prefix
    column: dict[int, int] = field(default_factory=dict)  # fed node -> its cache column
    complete: dict[int, float] = field(default_factory=dict)  # candidate -> exact log-likelihood

    def best_complete(self) -> float:
        return max(self.complete.values(), default=-math.inf)

    def picks(self) -> list[int]:
        """Nodes to feed this round: the whole subtree under the frontier node with the highest bound (one
        round then completes every candidate that starts that way), the subtrees of all frontier nodes
        that can still beat or tie the best complete candidate, and the rest of the gold answer's path.
        Sorted, so parents come before children."""
        frontier = [j for j in self.bound if j not in self.column]
        floor = self.best_complete()
        chosen: set[int] = set()
        if frontier:
            top = max(frontier, key=lambda j: self.bound[j])
            if self.bound[top] >= floor:
                chosen.update(self.trie.subtree[top][:SUBTREE_CAP])
            if floor > -math.inf:
                for j in frontier:
                    if self.bound[j] >= floor:
                        chosen.update(self.trie.subtree[j])
        if self.gold is not None and self.gold not in self.complete:
            chosen.update(j for j in self.trie.paths[self.gold] if j not in self.column)
        return sorted(chosen)

    def learn(self, node: int | None, logp: torch.Tensor) -> None:
        """Record the next-token distribution `logp` (V,) after `node` (None: after the prompt)."""
        base = 0.0 if node is None else self.bound[node]
        children = self.trie.roots if node is None else self.trie.children[node]
        for j in children:
            self.bound[j] = base + float(logp[self.trie.tokens[j]])
        for c in self.trie.root_ends if node is None else self.trie.ends[node]:
            self.complete[c] = base + float(logp[self.trie.candidates[c][-1]])

    def scores(self) -> Scores:
        values = [self.complete.get(c, -math.inf) for c in range(len(self.trie.candidates))]
        return Scores(torch.tensor(values, dtype=torch.float32), torch.tensor([len(c) for c in self.trie.candidates]))


@torch.no_grad()
def search_batch(
    model: Any, prompts: Sequence[Sequence[int]], tries: Sequence[CandidateTrie], golds: Sequence[int | None],
    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), prefix_len: int = 0, step: Lockstep = SOLO,
) -> list[Scores]:
    """Each prompt's winning candidate and gold candidate, exactly (see the module docstring). With other
    processes (`step`), every process calls this as often, and the rounds go in lockstep (`_drive`)."""
    device = next(model.parameters()).device
    dtype = model.get_input_embeddings().weight.dtype
    suffixes = [list(p[prefix_len:]) for p in prompts]
    width = max(len(s) for s in suffixes)
    rows = [_Row(t, g, len(p), width - len(s)) for p, t, g, s in zip(prompts, tries, golds, suffixes, strict=True)]
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros_like(ids)
    mask = torch.zeros((len(rows), 1, width, prefix_len + width), dtype=torch.bool)
    mask[:, 0, torch.arange(width), prefix_len + torch.arange(width)] = True  # padding attends to itself
    causal = torch.tril(torch.ones((width, width), dtype=torch.bool))
    for b, (row, s) in enumerate(zip(rows, suffixes, strict=True)):
        ids[b, row.offset:] = torch.tensor(s)
        positions[b, row.offset:] = torch.arange(prefix_len, prefix_len + len(s))
        mask[b, 0, row.offset:, :prefix_len] = True
        mask[b, 0, row.offset:, prefix_len + row.offset : prefix_len + width] = causal[row.offset:, row.offset:]
    cache = expanded_cache(prefix, len(rows))
    out = model(input_ids=ids.to(device), position_ids=positions.to(device), attention_mask=additive_mask(mask, dtype).to(device),
                **cache_kwargs(model, cache), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()  # (B, V)
    for b, row in enumerate(rows):
        row.learn(None, first[b])
    _drive(model, _rounds(model, rows, returned_cache(out), prefix_len + width, prefix_len, width), step)
    return [row.scores() for row in rows]


Request = dict[str, Any]  # the keyword arguments of one forward pass


def _drive(model: Any, requests: Generator[Request, torch.Tensor, None], step: Lockstep) -> None:
    """Run the forward passes `requests` asks for, sending each one's logits back. Before every pass the
    processes agree whether any of them still has one to run; a process whose search is over runs an
    idle pass beside the others' real ones, so all run as many passes (`eval/lockstep.py`)."""
    pending = next(requests, None)
    while step.any(pending is not None):
        if pending is None:
            idle_forward(model)
            continue
        logits = model(**pending).logits
        try:
            pending = requests.send(logits)
        except StopIteration:
            pending = None


def _rounds(model: Any, rows: list[_Row], cache: Any, columns: int, prefix_len: int,
            width: int) -> Generator[Request, torch.Tensor, None]:
    """Ask for rounds until every row is decided. When the rows' picks differ so much in number that most
    of a round would be padding, the rows are split into two groups (each with its own copy of the cache)."""
    device = next(model.parameters()).device
    dtype = model.get_input_embeddings().weight.dtype
    while True:
        picks = [row.picks() for row in rows]
        sizes = [len(p) for p in picks]
        if max(sizes) == 0:
            return
        split = split_point(sizes)
        if split is not None:
            order = sorted(range(len(rows)), key=lambda b: sizes[b])
            for group in (order[:split], order[split:]):
                yield from _rounds(model, [rows[b] for b in group], _select(cache, group), columns, prefix_len, width)
            return
        n = max(sizes)
        for row, pick in zip(rows, picks, strict=True):
            row.column.update({node: columns + k for k, node in enumerate(pick)})
        ids, positions, mask = _round(rows, picks, n, columns, prefix_len, width)
        logits = yield {"input_ids": ids.to(device), "position_ids": positions.to(device),
                        "attention_mask": additive_mask(mask, dtype).to(device), **cache_kwargs(model, cache),
                        "use_cache": True}
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (B, n, V)
        for b, (row, pick) in enumerate(zip(rows, picks, strict=True)):
            for k, node in enumerate(pick):  # parents first: a child's bound needs its parent's
                row.learn(node, logp[b, k])
        columns += n


def split_point(sizes: Sequence[int]) -> int | None:
    """Where to cut the rows, sorted by how many nodes each feeds, into two groups, when that saves at
    least a quarter of the round's padded width x rows; None to keep them together.

    >>> split_point([1, 1, 2, 1, 24, 1, 2, 1]), split_point([3, 4, 3, 4])
    (7, None)
    """
    s = sorted(sizes)
    whole = len(s) * s[-1]
    cost, k = min(((k * s[k - 1] + (len(s) - k) * s[-1], k) for k in range(1, len(s))), default=(whole, 0))
    return k if cost <= 0.75 * whole else None


def _select(cache: Any, rows: Sequence[int]) -> Any:
    from transformers import DynamicCache

    index = torch.tensor(list(rows))
    return DynamicCache(ddp_cache_data=[(k[index.to(k.device)], v[index.to(v.device)]) for k, v, *_ in cache])


def _round(rows: Sequence[_Row], picks: Sequence[Sequence[int]], n: int, columns: int, prefix_len: int,
           width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, positions and mask of one round: each picked node sees the prefix, its prompt, its
    ancestors (fed in earlier rounds or this one) and itself; padding sees itself only."""
    ids = torch.zeros((len(rows), n), dtype=torch.long)
    positions = torch.zeros_like(ids)
    mask = torch.zeros((len(rows), 1, n, columns + n), dtype=torch.bool)
    mask[:, 0, torch.arange(n), columns + torch.arange(n)] = True
    for b, (row, pick) in enumerate(zip(rows, picks, strict=True)):
        for k, node in enumerate(pick):
            ids[b, k] = row.trie.tokens[node]
            positions[b, k] = row.length - 1 + row.trie.depths[node]
            mask[b, 0, k, :prefix_len] = True
            mask[b, 0, k, prefix_len + row.offset : prefix_len + width] = True
            mask[b, 0, k, row.column[node]] = True
            parent = row.trie.parents[node]
            while parent >= 0:
                mask[b, 0, k, row.column[parent]] = True
                parent = row.trie.parents[parent]
    return ids, positions, mask
