"""The Ollama `Modelfile` that goes beside an exported GGUF: where the weights are, when to stop, which system
prompt the run trained with, and (when it can be derived exactly) the prompt template in Ollama's syntax.

Ollama renders prompts with Go templates, not the Jinja chat template the GGUF carries. A TEMPLATE is
written only when one of the known prompt formats (Llama 3 headers, ChatML) reproduces the tokenizer's chat
template character for character on probe conversations; otherwise the Modelfile says so, and Ollama falls
back to the chat template in the GGUF, which it maps to a built-in template when it recognises it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Messages = Sequence[dict[str, str]]
# name: (Ollama Go template without the begin-of-text prefix, the same format rendered in Python)
FORMATS: dict[str, tuple[str, Callable[[Messages], str]]] = {
    "llama3": (
        "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
        "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        lambda ms: "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>"
                           for m in ms) + "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "chatml": (
        "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        lambda ms: "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in ms)
        + "<|im_start|>assistant\n",
    ),
}
PROBE_SYSTEM = "SYSTEM-PROBE"
PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "USER-PROBE-1"}],
    [{"role": "user", "content": "USER-PROBE-1"}, {"role": "assistant", "content": "ANSWER-PROBE-1"},
     {"role": "user", "content": "USER-PROBE-2"}],
]


@dataclass(frozen=True)
class Modelfile:
    text: str
    stop: list[str]  # the stop parameters written
    template: str | None  # the derived format's name (llama3, chatml), or None: the GGUF's chat template applies
    system: str | None  # the SYSTEM written, or None when the run trained with none or with several


def stop_tokens(tokenizer: Any) -> list[str]:
    """The special token that ends an assistant turn in the chat template (`<|eot_id|>`, `<|im_end|>`), then
    the tokenizer's end-of-sequence token when it is another one."""
    answer = "ANSWER-PROBE-1"
    try:
        text = tokenizer.apply_chat_template([*PROBES[0], {"role": "assistant", "content": answer}], tokenize=False)
    except Exception:  # a template may refuse a conversation ending on an answer; the eos token still stops
        text = answer
    after = text[text.rindex(answer) + len(answer):]
    specials = sorted(tokenizer.all_special_tokens, key=len, reverse=True)
    stops = [next(s for s in specials if after.startswith(s))] if any(after.startswith(s) for s in specials) else []
    if tokenizer.eos_token and tokenizer.eos_token not in stops:
        stops.append(tokenizer.eos_token)
    return stops


def derive_template(tokenizer: Any, system: str | None) -> tuple[str, str] | None:
    """(format name, Ollama TEMPLATE) that renders every probe exactly as the chat template does, or None.

    Ollama hands the SYSTEM prompt to the template as the first message, so with a `system` every probe
    starts with one; without, the probes have none (a template that adds a default system prompt of its own,
    like SmolLM2's, then matches no format and is left to the GGUF's chat template).
    """
    head = [{"role": "system", "content": PROBE_SYSTEM}] if system else []
    try:
        rendered = [tokenizer.apply_chat_template([*head, *p], tokenize=False, add_generation_prompt=True)
                    for p in PROBES]
    except Exception:  # a template that refuses a probe (no system role, say) matches no known format
        return None
    # A template that writes the begin-of-text token itself (Llama 3's) needs it in the Go template too; SmolLM2's
    # begin-of-text token is `<|im_start|>`, which ChatML writes anyway.
    for prefix in dict.fromkeys(["", tokenizer.bos_token or ""]):
        for name, (template, python) in FORMATS.items():
            if all(r == prefix + python([*head, *p]) for r, p in zip(rendered, PROBES, strict=True)):
                return name, prefix + template
    return None


def modelfile(gguf_name: str, tokenizer: Any, systems: Sequence[str | None], adapter: str | None = None) -> Modelfile:
    """The Modelfile for `./gguf_name` (or that absolute path), with `ADAPTER ./adapter` when the trained part
    is a LoRA adapter GGUF applied to that base. `systems`: the system prompt of each trained task (None
    for none); one SYSTEM is written when they all agree, else the prompts are listed for the user to send."""
    distinct = list(dict.fromkeys(systems))
    system = distinct[0] if len(distinct) == 1 else None
    stop = stop_tokens(tokenizer)
    derived = derive_template(tokenizer, system)
    lines = ["# Ollama: ollama create NAME -f Modelfile && ollama run NAME  (written by multitune export)",
             f"FROM {_relative(gguf_name)}"]
    if adapter is not None:
        lines.append(f"ADAPTER {_relative(adapter)}")
    lines.append("")
    if derived is None:
        lines += ["# No TEMPLATE: Ollama uses the chat template stored in the GGUF (tokenizer.chat_template).", ""]
    else:
        lines += [f"# The {derived[0]} prompt format, checked against the run's chat template.",
                  f'TEMPLATE """{derived[1]}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stop]
    lines += ["PARAMETER temperature 0", ""]
    if system is not None:
        lines += ["# The system prompt the run trained with.", f'SYSTEM """{system}"""', ""]
    elif len(distinct) > 1:
        lines += ["# The tasks trained with different system prompts; send the one of the task you ask for:"]
        lines += [f"#   {json.dumps(s) if s is not None else '(no system prompt)'}" for s in distinct] + [""]
    return Modelfile("\n".join(lines), stop, derived[0] if derived else None, system)


def _relative(name: str) -> str:
    """A file beside the Modelfile as `./name` (Ollama resolves it from the Modelfile's folder); an absolute
    path as it is."""
    return name if name.startswith("/") else f"./{name}"
