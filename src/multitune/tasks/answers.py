"""How a generated answer is read back as one of a closed task's candidates: a label named in a sentence,
or a choice's letter ("The answer is B"). A kind's `read_answer` picks the reader for its rows."""

from __future__ import annotations

import re
from collections.abc import Sequence

_SPACE = re.compile(r"\s+")
_EDGE = "\"'`*.,;:!?()[]{} \n\t"


def normalise(text: str) -> str:
    """Case-folded, inner whitespace collapsed, quotes/brackets/punctuation stripped at both ends."""
    return _SPACE.sub(" ", text).strip(_EDGE).casefold()


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a generated answer names, or None.

    The answer as is; else its normalised form equal to a label's; else the longest label its
    normalised form starts with, followed by a non-word character ("card_arrival. It seems...").

    >>> parse_label("Claim", ["Claim", "Not a Claim"]), parse_label(" not a claim.", ["Claim", "Not a Claim"])
    ('Claim', 'Not a Claim')
    >>> parse_label("Claimed", ["Claim", "Not a Claim"]) is None
    True
    """
    text = text.strip()
    if text in labels:
        return text
    norm = normalise(text)
    by_norm = {normalise(label): label for label in labels}
    if norm in by_norm:
        return by_norm[norm]
    for key in sorted(by_norm, key=len, reverse=True):
        if key and norm.startswith(key) and (len(norm) == len(key) or not (norm[len(key)].isalnum()
                                                                           or norm[len(key)] == "_")):
            return by_norm[key]
    return None


_ANSWER_IS = re.compile(r"\banswer\s*(?:is)?\s*[:\-]?\s*\(?([A-Za-z0-9])\)?(?![A-Za-z0-9])", re.IGNORECASE)


def parse_choice(text: str, letters: Sequence[str]) -> str | None:
    """The choice letter a generated answer names, or None: "B", "B.", "(B)", "B) fishing", "B: ...",
    "The answer is B".

    >>> [parse_choice(t, "ABCDE") for t in ["B", "(c) a bank", "The answer is: D.", "Because", "F"]]
    ['B', 'C', 'D', None, None]
    """
    by_upper = {letter.upper(): letter for letter in letters}
    first = re.match(r"\s*\(?([A-Za-z0-9])\)?(?:$|[\s.:)\],;-])", text)
    for match in (first, _ANSWER_IS.search(text)):
        if match and match.group(1).upper() in by_upper:
            return by_upper[match.group(1).upper()]
    return None
