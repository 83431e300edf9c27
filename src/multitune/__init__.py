"""multitune: multi-task fine-tuning of Llama-family chat models, evaluated per task."""

import logging

__version__ = "0.1.0"

# bitsandbytes (imported by peft when installed) warns at import on CPUs with AVX512-BF16 that an optional
# kernel package fetched from the Hub is missing; multitune never uses that kernel, so the warning is noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
