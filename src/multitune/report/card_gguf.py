"""The model card's section for a run pushed with a GGUF file (`multitune push --gguf`): how to run it with
llama.cpp and Ollama. Its own module so the card's main builder stays as it is."""

from __future__ import annotations


def gguf_section(repo: str, gguf_file: str) -> str:
    """Markdown that downloads `gguf_file` and the `Modelfile` from `repo` and runs them."""
    name = repo.split("/")[-1].lower()
    return f"""## Run it with llama.cpp or Ollama

This repository also holds `{gguf_file}`, the merged model as one GGUF file (weights, tokenizer and chat
template), and an Ollama `Modelfile` (the stop token and the system prompt it was trained with):

```bash
hf download {repo} {gguf_file} Modelfile --local-dir {name}
```

With [llama.cpp](https://github.com/ggml-org/llama.cpp):

```bash
llama-cli -m {name}/{gguf_file} -cnv --temp 0           # chat in the terminal
llama-server -m {name}/{gguf_file} --jinja --port 8080  # OpenAI-compatible server
```

With [Ollama](https://ollama.com):

```bash
cd {name} && ollama create {name} -f Modelfile && ollama run {name}
```"""
