"""Scoring closed-answer tasks by likelihood: which candidate answer does the model find most probable?

`log P(candidate | prompt)` is exact: the sum of the candidate's token log-probabilities (end-of-turn
token included, so a label that is a prefix of another is not favoured), the same numbers as one full
forward pass per candidate. It is computed cheaply in three ways at once:

- the prefix that every prompt of a task shares (begin-of-text, system prompt, user header) is run once
  per task and its key/value cache reused by every batch;
- the candidates of a prompt are laid out as a tree of their distinct prefixes (`CandidateTrie`), so a
  token shared by several labels ("card" in card_arrival, card_linking, ...) is run once;
- one forward pass per batch runs the prompts' remaining tokens and every tree node together, under a
  4-D attention mask where a node sees its prompt, its ancestors and itself.

Only the logits of the last prompt token and of the tree nodes are computed, so memory depends on the
batch and the candidate set, never on the number of examples evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from multitune.models.cache import cache_kwargs, returned_cache

# Upper bound on the floats of log-probabilities one scoring pass holds: (prompts x (tree nodes + 1) x
# vocabulary). With Llama 3's 128k vocabulary and 77 labels this keeps a batch near 1 GiB in float32.
LOGITS_BUDGET = 1 << 28


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

    @cached_property
    def gather_index(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, token, candidate) for every candidate token: row 0 is the prompt's last position, row
        1 + i node i. Summing logp[row, token] by candidate gives the candidates' log-likelihoods."""
        rows, toks, owner = [], [], []
        for c, (cand, path) in enumerate(zip(self.candidates, self.paths, strict=True)):
            rows += [0] + [1 + i for i in path]
            toks += list(cand)
            owner += [c] * len(cand)
        return torch.tensor(rows), torch.tensor(toks), torch.tensor(owner)

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
    """Length of the token prefix all prompts share, leaving at least one token of each prompt after it
    (its last position predicts the first answer token).

    >>> shared_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
    2
    >>> shared_prefix_len([[1, 2], [1, 2]])
    1
    """
    if not prompts:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


@torch.no_grad()
def prefix_cache(model: Any, prefix: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) of `prefix`, each (1, kv_heads, len, head_dim); [] for no prefix."""
    if not prefix:
        return []
    device = _device(model)
    out = model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, logits_to_keep=1)
    return [(k, v) for k, v, *_ in returned_cache(out)]


@torch.no_grad()
def score_batch(
    model: Any, prompts: Sequence[Sequence[int]], tries: Sequence[CandidateTrie],
    prefix: Sequence[tuple[torch.Tensor, torch.Tensor]] = (), prefix_len: int = 0,
) -> list[Scores]:
    """Score every candidate of every prompt in one forward pass (see the module docstring).

    `prompts[b]` starts with the `prefix_len` tokens whose cache is `prefix` (from `prefix_cache`).
    """
    device = _device(model)
    suffixes = [list(p[prefix_len:]) for p in prompts]
    if any(not s for s in suffixes):
        raise ValueError("each prompt needs at least one token after the shared prefix")
    ids, positions, mask, width = _layout(suffixes, tries, prefix_len)
    n_nodes = ids.shape[1] - width
    keep = torch.arange(width - 1, width + n_nodes, device=device)  # last prompt token, then the nodes
    logits = model(
        input_ids=ids.to(device), position_ids=positions.to(device),
        attention_mask=additive_mask(mask, model.get_input_embeddings().weight.dtype).to(device),
        **cache_kwargs(model, expanded_cache(prefix, len(prompts))), use_cache=bool(prefix), logits_to_keep=keep,
    ).logits  # (B, 1 + nodes, V)
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    return [_candidate_scores(logp[b], trie) for b, trie in enumerate(tries)]


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask (True: attend) as the additive float mask both `sdpa` and `eager` take."""
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)


def expanded_cache(prefix: Sequence[tuple[torch.Tensor, torch.Tensor]], batch: int) -> Any:
    """A fresh cache holding the shared prefix for `batch` prompts (None without a prefix). expand() is a
    view: the prefix is stored once however many prompts share it, and later tokens are concatenated
    into new tensors, so the prefix itself is never modified."""
    if not prefix:
        return None
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in prefix])


def _layout(
    suffixes: Sequence[Sequence[int]], tries: Sequence[CandidateTrie], prefix_len: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Input ids (B, W + N), position ids (B, W + N) and the attention mask (B, 1, W + N, prefix + W + N).

    Prompts are left-padded to width W so every prompt's last token sits at W - 1; tree nodes follow,
    padded to N. A padding query attends to itself only (a row with nothing to attend to would give
    NaN); no real query ever attends to padding.
    """
    width = max(len(s) for s in suffixes)
    n_nodes = max(len(t) for t in tries)
    q_len = width + n_nodes
    ids = torch.zeros((len(suffixes), q_len), dtype=torch.long)
    positions = torch.zeros((len(suffixes), q_len), dtype=torch.long)
    mask = torch.zeros((len(suffixes), 1, q_len, prefix_len + q_len), dtype=torch.bool)
    causal = torch.tril(torch.ones((width, width), dtype=torch.bool))
    diag = torch.arange(q_len)
    mask[:, 0, diag, prefix_len + diag] = True
    for b, (suffix, trie) in enumerate(zip(suffixes, tries, strict=True)):
        off, n = width - len(suffix), len(trie)
        ids[b, off:width] = torch.tensor(list(suffix))
        positions[b, off:width] = torch.arange(prefix_len, prefix_len + len(suffix))
        mask[b, 0, off:width, :prefix_len] = True
        mask[b, 0, off:width, prefix_len + off : prefix_len + width] = causal[off:, off:]
        if n:
            ids[b, width : width + n] = torch.tensor(trie.tokens)
            positions[b, width : width + n] = prefix_len + len(suffix) - 1 + torch.tensor(trie.depths)
            mask[b, 0, width : width + n, :prefix_len] = True
            mask[b, 0, width : width + n, prefix_len + off : prefix_len + width] = True
            mask[b, 0, width : width + n, prefix_len + width : prefix_len + width + n] = trie.ancestry
    return ids, positions, mask, width


def _candidate_scores(logp: torch.Tensor, trie: CandidateTrie) -> Scores:
    """logp: (1 + nodes, V), row 0 the distribution after the prompt, row 1 + i after node i."""
    rows, toks, owner = trie.gather_index
    totals = torch.zeros(len(trie.candidates), dtype=torch.float32).index_add_(0, owner, logp[rows, toks])
    return Scores(totals, torch.tensor([len(c) for c in trie.candidates]))


def prompts_per_pass(n_nodes: int, vocab_size: int, micro_batch_size: int) -> int:
    """How many prompts one scoring pass takes: `micro_batch_size`, fewer when their log-probabilities
    would pass `LOGITS_BUDGET`."""
    return max(1, min(micro_batch_size, LOGITS_BUDGET // ((n_nodes + 1) * vocab_size)))


def candidate_logprobs(model: Any, prompt: Sequence[int], candidates: Sequence[Sequence[int]]) -> torch.Tensor:
    """log P(candidate | prompt) for each candidate token sequence -> (K,) float32 on the CPU."""
    return score_batch(model, [prompt], [CandidateTrie.build(candidates)])[0].logprobs


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device
