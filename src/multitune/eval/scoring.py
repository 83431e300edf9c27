"""Scoring closed-answer tasks by likelihood: which candidate answer does the model find most probable?

`log P(candidate | prompt)` is exact: the sum of the candidate's token log-probabilities (end-of-turn
token included, so a label that is a prefix of another is not favoured), the same numbers as one full
forward pass per candidate. Three things make it cheap, here and in `eval/search.py`, which runs them:

- the shared prefix of a task's prompts (begin-of-text, system prompt, user header: `shared_prefix_len`
  tokens) runs once per task, and every row attends to its keys and values;
- the candidates of a prompt are laid out as a tree of their distinct prefixes (`CandidateTrie`), so a
  token shared by several labels ("card" in card_arrival, card_linking, ...) runs once;
- a tree node attends to its prompt, its ancestors and itself, so nodes of many rows and rounds run in
  one packed pass (`eval/pool.py`); only the last prompt token's and the nodes' logits are computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from multitune.data.prefix import common_prefix_len


@dataclass(frozen=True)
class CandidateTrie:
    """A prompt's candidates as the tree of their proper prefixes, parents before children.

    Node `i` stands for a prefix of one or more candidates and holds its last token. Candidate `c` with
    tokens `t0 .. tm` scores `log P(t0 | prompt) + sum_j log P(t_j | node paths[c][j-1])`: the first
    token is predicted by the prompt's last position, each later token by the node of the prefix
    before it.

    >>> trie = CandidateTrie.build([[7, 1], [7, 2, 1], [9, 1]])
    >>> trie.tokens, trie.parents, trie.depths, trie.paths
    ([7, 2, 9], [-1, 0, -1], [1, 2, 1], [[0], [0, 1], [2]])
    """

    candidates: tuple[tuple[int, ...], ...]
    tokens: list[int]
    parents: list[int]
    depths: list[int]
    paths: list[list[int]]

    @cached_property
    def roots(self) -> list[int]:
        """Nodes of depth 1: candidates' first tokens that more tokens follow."""
        return [i for i, p in enumerate(self.parents) if p < 0]

    @cached_property
    def children(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.tokens]
        for i, p in enumerate(self.parents):
            if p >= 0:
                out[p].append(i)
        return out

    @cached_property
    def subtree(self) -> list[list[int]]:
        """Per node, itself and all its descendants, shallowest first (any prefix of the list holds each
        node's parent, or the node is the subtree's root)."""
        out: list[list[int]] = [[i] for i in range(len(self.tokens))]
        for i in reversed(range(len(self.tokens))):  # children have larger indices than their parents
            if self.parents[i] >= 0:
                out[self.parents[i]].extend(out[i])
        return [sorted(s, key=lambda i: (self.depths[i], i)) for s in out]

    @cached_property
    def root_ends(self) -> list[int]:
        """Candidates of one token: complete as soon as the prompt has run."""
        return [c for c, path in enumerate(self.paths) if not path]

    @cached_property
    def ends(self) -> list[list[int]]:
        """Per node, the candidates whose last token follows it."""
        out: list[list[int]] = [[] for _ in self.tokens]
        for c, path in enumerate(self.paths):
            if path:
                out[path[-1]].append(c)
        return out

    @classmethod
    def build(cls, candidates: Sequence[Sequence[int]]) -> CandidateTrie:
        if not candidates or any(len(c) == 0 for c in candidates):
            raise ValueError("every candidate needs at least one token")
        index: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        paths = []
        for cand in candidates:
            path = []
            for j in range(1, len(cand)):  # proper prefixes cand[:1] .. cand[:-1]
                prefix = tuple(cand[:j])
                if prefix not in index:
                    index[prefix] = len(tokens)
                    tokens.append(cand[j - 1])
                    parents.append(index[prefix[:-1]] if j > 1 else -1)
                    depths.append(j)
                path.append(index[prefix])
            paths.append(path)
        return cls(tuple(tuple(c) for c in candidates), tokens, parents, depths, paths)

    @cached_property
    def _next(self) -> list[list[int]]:
        ends = [[self.candidates[c][-1] for c in e] for e in [self.root_ends, *self.ends]]
        kids = [[self.tokens[k] for k in ks] for ks in [self.roots, *self.children]]
        return [k + e for k, e in zip(kids, ends, strict=True)]

    def next_tokens(self, node: int | None) -> list[int]:
        """The tokens whose log-probability after `node` (None: after the prompt) the scores need: its
        children's, then the last token of each candidate that ends there.

        >>> trie = CandidateTrie.build([[7, 1], [7, 2, 1], [9, 1]])
        >>> trie.next_tokens(None), trie.next_tokens(0)
        ([7, 9], [2, 1])
        """
        return self._next[0 if node is None else node + 1]

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def ancestry(self) -> torch.Tensor:
        """(n, n) bool: [k, a] is True when node a is node k or one of its ancestors."""
        n = len(self.tokens)
        out = torch.zeros((n, n), dtype=torch.bool)
        for k, parent in enumerate(self.parents):  # parents come first, so their rows are complete
            if parent >= 0:
                out[k] = out[parent]
            out[k, k] = True
        return out


@dataclass(frozen=True)
class Scores:
    """One prompt's candidates: summed log-likelihood and number of tokens of each, in candidate order."""

    logprobs: torch.Tensor  # (K,) float32
    lengths: torch.Tensor  # (K,) int64


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the shared prefix evaluation runs once for all `prompts`: their common prefix
    (`data/prefix.common_prefix_len`), leaving at least one token of each prompt after it (its last position
    predicts the first answer token).

    >>> shared_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
    2
    >>> shared_prefix_len([[1, 2], [1, 2]])
    1
    """
    if not prompts:
        return 0
    return max(0, min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1))
