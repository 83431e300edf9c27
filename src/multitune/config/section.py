"""The base of every config section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Frozen so nothing downstream can mutate the resolved config; `extra=forbid` turns typos into errors;
    # numbers given where text is expected (a revision "1234", a label "3") stay text.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
