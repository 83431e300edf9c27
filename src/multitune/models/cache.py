"""The key/value cache keyword of a transformers model's forward, and the cache a forward returned: one
place for both names, which transformers 5.24 changed (`past_key_values` -> `cache`)."""

from __future__ import annotations

import functools
import inspect
from typing import Any


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """`{keyword: cache}` for `model`'s forward. transformers 5.24 renamed `past_key_values` to `cache`
    (the old name still works there, with a FutureWarning every user would see); earlier 5.x releases
    know only `past_key_values`. The model's own signature decides, so both work without a warning."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a peft wrapper
    return {cache_keyword(type(base)): cache}


@functools.cache
def cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def returned_cache(out: Any) -> Any:
    """The cache a forward with `use_cache=True` returned, under the name this transformers gives it."""
    cache = out.get("cache")
    return out.past_key_values if cache is None else cache
