"""Scoring closed answers in packed passes: every candidate's log-likelihood, or the winner's and the gold
answer's by an exact best-first search over the tree of candidate prefixes.

A node's log-likelihood (that of the candidate prefix it stands for, `CandidateTrie`) bounds that of every
candidate through it (more tokens only add log-probabilities <= 0). After the row's prompt has run, each
round feeds, per row, the rest of the gold answer's path (for the exact validation loss) and the frontier
node with the highest bound (while no candidate is complete) or the frontier nodes with the highest
bounds among those whose bound is at least the best complete score, as many as the row's width (below).
The search stops when no node can still beat (or tie) the best complete candidate. So the winner, its
log-likelihood and the gold answer's are exactly those of running every candidate; a candidate the search
never completed is provably below the winner and gets -inf. With a width of one node it is plain
best-first and feeds exactly the nodes any exact method must (those whose bound reaches the winner's
score, which could hide a better candidate) besides the gold path; wider rounds feed what a later round
might have pruned. Rounds cost no padding here (`eval/pool.py`), so the search feeds nodes one level at a
time instead of guessing subtrees.

For a trained model that is the gold path and a node or two; for a model with no preference (zero-shot)
it is most of the tree, level by level.

The width is the row's share of a pass (`Width`): a pass's tokens over the rows left. While many rows
remain, passes are full anyway and a row feeds only its highest bounds, so a node that a better candidate
found meanwhile rules out is never run (a half-trained model's floor rises round by round); when few rows
remain and passes would run nearly empty, a row feeds every node that can still win and finishes in fewer
passes. The width never changes a result, only how many nodes run and in which round.

`every_candidate` feeds the whole tree with the prompt instead, in one segment: every candidate's exact
log-likelihood (small trees, length normalisation, choice texts).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from multitune.data.masks import causal
from multitune.eval.lockstep import SOLO, Lockstep
from multitune.eval.pool import KVPool, Segment, Work, drive, logprobs_at
from multitune.eval.scoring import CandidateTrie, Scores, shared_prefix_len

TOKENS_PER_PASS = 512  # tokens of one packed pass, from any rows (eval.tokens_per_pass)


@dataclass
class Width:
    """Nodes a row may feed per round beyond its gold path: a pass's tokens shared among the rows left
    (`score_rows` updates it as rows finish), at least one."""

    tokens_per_pass: int
    rows_left: int

    @property
    def nodes(self) -> int:
        return max(1, self.tokens_per_pass // max(1, self.rows_left))


@dataclass(eq=False)  # rows are told apart by identity (drive removes them from a list)
class _Scoring:
    """One prompt's scoring state, a row of `eval/pool.drive` (as `eval/generate._Decoding` is a decoding's).
    Node bounds are known once the node's parent has run."""

    index: int  # position in the caller's list
    prompt: list[int]  # the prompt after the shared prefix
    start: int  # position of prompt[0]
    trie: CandidateTrie
    gold: int | None
    every: bool  # every candidate, in one segment with the prompt
    width: Width
    keys: list[int] = field(default_factory=list)  # pool slots: the prompt's, then the fed nodes' in order
    fed: list[int] = field(default_factory=list)  # nodes in the order fed
    sources: list[int | None] = field(default_factory=list)  # what the last segment's logits follow (None: prompt)
    bound: dict[int, float] = field(default_factory=dict)  # node -> log-likelihood of its prefix
    complete: dict[int, float] = field(default_factory=dict)  # candidate -> exact log-likelihood
    _picks: list[int] | None = None

    def wants(self) -> int:
        if not self.keys:
            return len(self.prompt) + (len(self.trie) if self.every else 0)
        if self._picks is None:
            self._picks = self.picks()
        return len(self._picks)

    def feed(self, pool: KVPool) -> Segment:
        first = not self.keys
        nodes = (list(range(len(self.trie))) if self.every else []) if first else (self._picks or [])
        self._picks = None
        prompt = self.prompt if first else []
        n_prompt, n_new = len(self.prompt), len(prompt) + len(nodes)
        self.keys += pool.alloc(n_new)
        self.fed += nodes
        # keys: prompt, then nodes as fed; the prompt sees itself causally (`causal`), a node sees the
        # prompt, its ancestors and itself (the tree's mask: `CandidateTrie.ancestry`)
        mask = torch.zeros((n_new, len(self.keys)), dtype=torch.bool)
        mask[: len(prompt), : len(prompt)] = causal(len(prompt))
        mask[len(prompt) :, :n_prompt] = True
        mask[len(prompt) :, n_prompt:] = self.trie.ancestry[nodes][:, self.fed]
        last = self.start + n_prompt - 1  # the position of the prompt's last token
        self.sources = ([None] if first else []) + nodes
        return Segment(list(self.keys), prompt + [self.trie.tokens[j] for j in nodes],
                       [self.start + i for i in range(len(prompt))] + [last + self.trie.depths[j] for j in nodes],
                       mask, ([n_prompt - 1] if first else []) + [len(prompt) + i for i in range(len(nodes))])

    def picks(self) -> list[int]:
        """Nodes to feed this round (module docstring): the highest bounds that reach the best complete
        candidate, up to the row's width, and the gold path; sorted, so parents come before children."""
        fed = set(self.fed)
        floor = max(self.complete.values(), default=-math.inf)
        frontier = [j for j in self.bound if j not in fed and self.bound[j] >= floor]
        frontier.sort(key=lambda j: -self.bound[j])
        # No complete candidate yet: the gold path will give a floor, so one node beside it, not a guess.
        chosen = set(frontier[: self.width.nodes if floor > -math.inf else 1])
        if self.gold is not None and self.gold not in self.complete:
            chosen.update(j for j in self.trie.paths[self.gold] if j not in fed)
        return sorted(chosen)

    def learn(self, node: int | None, values: Sequence[float]) -> None:
        """Record log P(token | prefix up to `node`) for `trie.next_tokens(node)` (None: after the prompt)."""
        base = 0.0 if node is None else self.bound[node]
        children = self.trie.roots if node is None else self.trie.children[node]
        ends = self.trie.root_ends if node is None else self.trie.ends[node]
        for j, v in zip(children, values[: len(children)], strict=True):
            self.bound[j] = base + v
        for c, v in zip(ends, values[len(children) :], strict=True):
            self.complete[c] = base + v

    def needed(self) -> tuple[int, int]:
        """The prompt and the nodes no exact method can skip: those on the gold answer's path (its exact
        log-likelihood) and every node whose bound reaches the winner's log-likelihood (it could hide a
        better candidate until its children are known); each node and the prompt's last token need logits.
        Under length normalisation a bound proves nothing and every node is needed: this undercounts."""
        best = max(self.complete.values(), default=-math.inf)
        nodes = {j for j in self.fed if self.bound[j] >= best}
        if self.gold is not None:
            nodes.update(self.trie.paths[self.gold])
        return len(self.prompt) + len(nodes), 1 + len(nodes)

    def scores(self) -> Scores:
        values = [self.complete.get(c, -math.inf) for c in range(len(self.trie.candidates))]
        return Scores(torch.tensor(values, dtype=torch.float32), torch.tensor([len(c) for c in self.trie.candidates]))


def _read(logits: torch.Tensor, fed: list[tuple[Any, int]]) -> None:
    """Every fed row's next-token log-probabilities, gathered in one go, then learned in feeding order."""
    rows, tokens = [], []
    for row, first in fed:
        for i, node in enumerate(row.sources):
            wanted = row.trie.next_tokens(node)
            rows += [first + i] * len(wanted)
            tokens += wanted
    values = logprobs_at(logits, rows, tokens)
    at = 0
    for row, _ in fed:
        for node in row.sources:
            n = len(row.trie.next_tokens(node))
            row.learn(node, values[at : at + n])
            at += n


def score_rows(
    model: Any, prompts: Sequence[Sequence[int]], tries: Sequence[CandidateTrie], golds: Sequence[int | None], *,
    every_candidate: bool, tokens_per_pass: int = TOKENS_PER_PASS, step: Lockstep = SOLO, work: Work | None = None,
) -> Iterator[tuple[int, Scores]]:
    """(position in `prompts`, candidate scores) of each prompt as soon as it is decided, in packed passes
    (module docstring). With other processes (`step`), every process calls this as often, and the passes
    go in lockstep. The prompts' shared prefix runs once."""
    prefix_len = shared_prefix_len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    width = Width(tokens_per_pass, len(prompts))
    rows = [_Scoring(i, list(prompts[i][prefix_len:]), prefix_len, tries[i], golds[i], every_candidate, width)
            for i in order]
    shared_prefix = list(prompts[0][:prefix_len]) if prompts else []
    for row in drive(model, rows, shared_prefix, _read, tokens_per_pass=tokens_per_pass, step=step, work=work):
        width.rows_left -= 1
        yield row.index, row.scores()


def search_batch(
    model: Any, prompts: Sequence[Sequence[int]], tries: Sequence[CandidateTrie], golds: Sequence[int | None],
    step: Lockstep = SOLO, tokens_per_pass: int = TOKENS_PER_PASS,
) -> list[Scores]:
    """Each prompt's winning candidate and gold candidate, exactly; the others exact or -inf."""
    out: list[Scores | None] = [None] * len(prompts)
    for k, s in score_rows(model, prompts, tries, golds, every_candidate=False, tokens_per_pass=tokens_per_pass,
                           step=step):
        out[k] = s
    return out  # type: ignore[return-value]


def score_batch(model: Any, prompts: Sequence[Sequence[int]], tries: Sequence[CandidateTrie],
                tokens_per_pass: int = TOKENS_PER_PASS) -> list[Scores]:
    """Every candidate's exact log-likelihood for every prompt."""
    out: list[Scores | None] = [None] * len(prompts)
    for k, s in score_rows(model, prompts, tries, [None] * len(prompts), every_candidate=True,
                           tokens_per_pass=tokens_per_pass):
        out[k] = s
    return out  # type: ignore[return-value]


def candidate_logprobs(model: Any, prompt: Sequence[int], candidates: Sequence[Sequence[int]]) -> torch.Tensor:
    """log P(candidate | prompt) for each candidate token sequence -> (K,) float32 on the CPU."""
    return score_batch(model, [prompt], [CandidateTrie.build(candidates)])[0].logprobs
