"""Task entries of a run's config (`tasks:`): each is validated by the config section of the kind it names.

The sections themselves live with their kinds (`multitune.tasks.<kind>`, on the floor below): the config
holds no list of kinds, it looks the named kind up in the registry (`multitune.tasks.KINDS`) as it
validates, so a kind registered at any time is configurable, and an unknown or missing `kind` is reported
with the kinds there are.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, SerializeAsAny
from pydantic_core import PydanticCustomError

from multitune.tasks import KINDS
from multitune.tasks.config import TaskBase

UNKNOWN_KIND = "task_kind_unknown"
MISSING_KIND = "task_kind_missing"


def kind_names() -> str:
    """The registered kinds, as error messages list them: `'classification', 'multiple_choice', ...`."""
    return ", ".join(repr(name) for name in KINDS)


def kind_section(value: Any) -> Any:
    """A `tasks:` entry validated by its kind's section; anything but a mapping is left to `TaskBase` to
    refuse. Errors inside the section keep their place (`tasks.0.labl`)."""
    if not isinstance(value, dict):
        return value
    if "kind" not in value:
        raise PydanticCustomError(MISSING_KIND, "missing `kind` (one of {kinds})", {"kinds": kind_names()})
    spec = KINDS.get(value["kind"]) if isinstance(value["kind"], str) else None
    if spec is None:
        raise PydanticCustomError(UNKNOWN_KIND, "unknown task kind '{kind}' (one of {kinds})",
                                  {"kind": value["kind"], "kinds": kind_names()})
    return spec.config.model_validate(value)


TaskConfig = Annotated[SerializeAsAny[TaskBase], BeforeValidator(kind_section)]
"""One `tasks:` entry: an instance of its kind's section (`SerializeAsAny`: a saved config keeps the
kind's own fields, not only the shared ones)."""
