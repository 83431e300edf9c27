"""The base of every config section.

On the lowest floor because the config is assembled from two floors: each task kind declares its own
section (`multitune.tasks.<kind>`), below the run config (`multitune.config`) that gathers them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    # Frozen so nothing downstream can mutate the resolved config; `extra=forbid` turns typos into errors;
    # numbers given where text is expected (a revision "1234", a label "3") stay text.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
