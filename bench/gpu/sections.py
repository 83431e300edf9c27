"""The sections of bench/gpu/check.py, one method each on `Check`, which holds what they share (the token
streams, the model folders, the measured peak) so that each is built once and only when needed."""

from __future__ import annotations

import dataclasses
import importlib.util
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from bench.gpu import eval as gpu_eval
from bench.gpu import launch as gpu_launch
from bench.gpu import shapes as gpu_shapes
from bench.gpu.data import Streams, build_streams, peer_rows
from bench.gpu.shapes import SKIP_CUDA, Shape, free_memory
from bench.gpu.steps import Method, device_defaults, measure, resolved_config


class Check:
    def __init__(self, cpu_smoke: bool, data_dir: Path, work: Path, wanted: list[str]) -> None:
        self.shape: Shape = gpu_shapes.SMOKE if cpu_smoke else gpu_shapes.LLAMA3_8B
        self.data_dir, self.work, self.wanted = data_dir, work, wanted
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._peaks: dict[str, Any] | None = None
        self._streams: Streams | None = None
        self._folders: dict[int, str] = {}
        self._background: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(max_workers=2)  # threads that wait on launched subprocesses

    def in_background(self, section: str) -> bool:
        return section in self._background

    def after(self, section: str) -> None:
        """On a CPU the single-process launch needs nothing the timed sections do: it starts once the data
        is ready and runs beside them (a second core), as subprocesses."""
        if section == "data" and not torch.cuda.is_available() and "launch_single" in self.wanted:
            self._start_launch("single")

    @property
    def peaks(self) -> dict[str, Any]:
        """The measured and datasheet bf16 peaks, measured once (under a second) by whichever section needs
        them first: a rerun of a few sections still gets its MFU."""
        if self._peaks is None:
            self._peaks = gpu_shapes.matmul_peak()
        return self._peaks

    @property
    def streams(self) -> Streams:
        if self._streams is None:
            self.data()
        assert self._streams is not None
        return self._streams

    def folder(self, layers: int) -> str:
        """A saved random model of `layers` layers with the tokenizer (QLoRA's quantising load and the
        launched runs read one), written once."""
        if layers not in self._folders:
            path = self.work / f"llama-{layers}-layers"
            info = gpu_shapes.save_model_folder(self.shape, layers, self.streams.tokenizer, path, self.device)
            print(f"saved {info}", flush=True)
            self._folders[layers] = str(path)
        return self._folders[layers]

    # --- sections -------------------------------------------------------------------------------------

    def environment(self) -> dict[str, Any]:
        return {**gpu_shapes.environment(), "peak": self.peaks, "shape": gpu_shapes.describe(self.shape)}

    def data(self) -> dict[str, Any]:
        self._streams, stats = build_streams(self.shape, self.data_dir)
        return stats

    def defaults(self) -> dict[str, Any]:
        return device_defaults(self.shape, self.streams.tasks)

    def lora(self) -> dict[str, Any]:
        return measure(self.shape, Method("lora", self.shape.layers), self.streams, self.peaks)

    def share_prefix(self) -> dict[str, Any]:
        """Shared-prefix rows (`train.share_prefix: true`) against padded rows, the GPU's default, on the
        same examples: LoRA at the shape's layers, a fresh model of the same seed for each, so their first
        losses must agree (the layout is exact). Running out of memory is a result here, not an error."""
        out: dict[str, Any] = {"layers": self.shape.layers}
        for layout in ("padded", "shared_prefix"):
            free_memory()  # here, not in the except block: the traceback held the failed try's tensors
            try:
                out[layout] = measure(self.shape, Method("lora", self.shape.layers, layouts=(layout,)), self.streams,
                                      self.peaks)
            except torch.cuda.OutOfMemoryError as e:
                out[layout] = {"status": "out of memory: " + str(e).splitlines()[0][:300]}
        free_memory()
        return {**out, **compare_layouts(out["padded"], out["shared_prefix"], torch.cuda.is_available())}

    def eval(self) -> dict[str, Any]:
        """multitune's evaluation (scoring, multiple choice, greedy generation) at the shape (bench/gpu/eval.py)."""
        return gpu_eval.measure_eval(self.shape, self.streams)

    def qlora(self) -> dict[str, Any]:
        folder = self.folder(self.shape.layers)
        # bitsandbytes' CPU 4-bit kernels take seconds a step even at the toy size: one layout there.
        layouts = ("packed", "default") if torch.cuda.is_available() else ("default",)
        return measure(self.shape, Method("qlora", self.shape.layers, layouts=layouts), self.streams, self.peaks, folder)

    def dora(self) -> dict[str, Any]:
        return measure(self.shape, Method("dora", self.shape.layers), self.streams, self.peaks)

    def full(self) -> dict[str, Any]:
        """Full fine-tuning at the most layers that fit: each weight (float32 master weights under the
        shipped defaults on a GPU), its gradient and AdamW's two states. A size whose weights, gradients
        and states alone pass 90% of the GPU's memory is not tried; a size that runs out is the next one."""
        cfg, _ = resolved_config(self.shape, Method("full", 1), self.streams.tasks, "default", 1)
        weight_bytes = torch.empty((), dtype=getattr(torch, cfg.model.dtype)).element_size()
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
        not_tried: dict[int, str] = {}
        too_big: list[int] = []
        for layers in self.shape.full_layers:
            need = gpu_shapes.full_state_gib(self.shape, layers, weight_bytes)
            if memory is not None and need > 0.9 * memory:
                not_tried[layers] = f"{need:.0f} GiB of weights, gradients and AdamW states > 90% of {memory:.0f} GiB"
                continue
            free_memory()  # here, not in the except block: the traceback held the failed try's tensors
            try:
                return {**measure(self.shape, Method("full", layers), self.streams, self.peaks),
                        "out_of_memory_at_layers": too_big, "not_tried": not_tried}
            except torch.cuda.OutOfMemoryError:
                too_big.append(layers)
        raise RuntimeError(f"full fine-tuning fit at no size: out of memory at {too_big} layers, not tried {not_tried}")

    def lora_checkpointing(self) -> dict[str, Any]:
        return measure(self.shape, Method("lora", self.shape.layers, gradient_checkpointing=True), self.streams,
                       self.peaks)

    def trl(self) -> dict[str, Any]:
        """TRL's SFTTrainer + PEFT on the same shape, rows and LoRA settings (peers.py)."""
        if importlib.util.find_spec("trl") is None:
            return {"status": "skipped: trl not installed (pip install 'multitune[bench]')"}
        from bench.peers import trl_side as peers

        shape, streams = self.shape, self.streams
        rows = peer_rows(streams.examples)
        # The LoRA multitune trains with by default (dropout 0 since issue 22), and its base's dtype.
        ours, _ = resolved_config(shape, Method("lora", shape.layers), streams.tasks, "default", 1)
        lora = peers.LoraSettings(r=ours.adapter.r, alpha=ours.adapter.alpha, dropout=ours.adapter.dropout)
        out: dict[str, Any] = {"layers": shape.layers, "lora": dataclasses.asdict(lora), "dtype": ours.model.dtype}
        for layout, micro, packing in [("packed", shape.packed_micro_batch, True),
                                       ("padded", shape.padded_micro_batch, False)]:
            model = gpu_shapes.random_model(shape, shape.layers, streams.tokenizer, self.device, dtype=ours.model.dtype)
            try:
                out[layout] = peers.trl_lora_steps(
                    model, streams.tokenizer, rows, lora,
                    micro_batch_size=micro, learning_rate=shape.learning_rate,
                    steps=shape.warmup_steps + shape.timed_steps, warmup_steps=shape.warmup_steps,
                    max_length=shape.pack_len, packing=packing, output_dir=str(self.work / f"trl-{layout}"))
            finally:
                del model
                free_memory()
            if out[layout]["peak_memory_gib"] is None:
                out[layout]["peak_memory_gib"] = SKIP_CUDA
        return out

    def _start_launch(self, topology: str) -> None:
        layers = self.shape.small_layers
        folder = self.folder(layers)  # written here, before any thread: one writer
        self._background[f"launch_{topology}"] = self._pool.submit(
            gpu_launch.check_topology, topology, self.shape, layers, folder, self.data_dir, self.work / "launch")

    def _launch(self, topology: str) -> dict[str, Any]:
        if topology != "single" and not torch.cuda.is_available():
            return {"status": SKIP_CUDA + " (accelerate runs FSDP only on GPUs)"}
        if f"launch_{topology}" not in self._background:
            self._start_launch(topology)
        return {"layers": self.shape.small_layers, **self._background[f"launch_{topology}"].result()}

    def launch_single(self) -> dict[str, Any]:
        if torch.cuda.is_available():  # the GPU's minutes go to FSDP; the CPU suite runs this one
            return {"status": "skipped: on a GPU the FSDP launches cover this path"}
        return self._launch("single")

    def launch_fsdp(self) -> dict[str, Any]:
        """FSDP, with FSDP + QLoRA beside it on the same GPU (nothing is timed while they run)."""
        if torch.cuda.is_available() and "launch_fsdp_qlora" in self.wanted:
            self._start_launch("fsdp_qlora")
        return self._launch("fsdp")

    def launch_fsdp_qlora(self) -> dict[str, Any]:
        return self._launch("fsdp_qlora")

    def compile(self) -> dict[str, Any]:
        """`train.compile: true` (inductor, as the recipe sets it) against eager, LoRA on packed rows. The
        CPU smoke compiles with aot_eager: the same dynamo capture and autograd split without a C++ build."""
        backend = "inductor" if torch.cuda.is_available() else "eager"
        layers = self.shape.small_layers
        eager = measure(self.shape, Method("lora", layers, layouts=("packed",)), self.streams, self.peaks)
        compiled = measure(self.shape, Method("lora", layers, compile_backend=backend, layouts=("packed",)),
                           self.streams, self.peaks)
        e, c = eager["packed"], compiled["packed"]
        return {"layers": layers, "backend": backend, "eager": eager, "compiled": compiled,
                "compile_s": round(c["first_step_s"] - c["step_s"], 2),
                "speedup": round(c["tokens_per_s"] / e["tokens_per_s"], 3)}

    def logits(self) -> dict[str, Any]:
        """Answer-only logits against the plain loss (logits at every position) at the model's vocabulary."""
        layers = self.shape.small_layers
        out: dict[str, Any] = {"layers": layers, "vocab": self.shape.vocab}
        for name, answer_only in [("answer_only", True), ("plain", False)]:
            out[name] = measure(self.shape, Method("lora", layers, answer_logits_only=answer_only), self.streams,
                                self.peaks)
        liger = importlib.util.find_spec("liger_kernel") is not None
        out["liger"] = ("installed, but multitune has no Liger or chunked cross-entropy path to measure" if liger
                        else "skipped: liger-kernel not installed (and multitune has no fused or chunked "
                             "cross-entropy path: answer-only logits is its only one)")
        return out


def compare_layouts(padded: dict[str, Any], shared: dict[str, Any], gpu: bool) -> dict[str, Any]:
    """Shared-prefix rows over padded rows: tokens/s, peak memory, positions run, the first losses (same
    weights, same examples), and what the measurement says about the GPU default: the layout wins when it
    is at least 5% faster at no more than 5% more memory."""
    p, s = padded.get("padded"), shared.get("shared_prefix")
    if isinstance(p, dict) and str(shared.get("status", "")).startswith("out of memory"):
        return {"verdict": "padded rows stay the GPU default: shared-prefix rows ran out of memory where padded "
                           "rows fit"}
    if not isinstance(p, dict) or not isinstance(s, dict):
        return {"verdict": "not measured: " + "; ".join(str(x.get("status", x.get("error"))) for x in (padded, shared)
                                                        if "status" in x or "error" in x)}
    first_diff = abs(s["losses"][0] - p["losses"][0]) / max(abs(p["losses"][0]), 1e-9)
    out: dict[str, Any] = {"speedup": round(s["tokens_per_s"] / p["tokens_per_s"], 3),
                           "positions_ratio": round(s["positions_per_step"] / p["positions_per_step"], 3),
                           "first_loss_relative_difference": float(f"{first_diff:.3g}")}
    if not gpu:
        return {**out, "peak_memory_ratio": SKIP_CUDA, "verdict": "not judged on a CPU (the smoke runs the paths)"}
    memory = s["peak_memory_gib"] / p["peak_memory_gib"]
    wins = out["speedup"] >= 1.05 and memory <= 1.05
    return {**out, "peak_memory_ratio": round(memory, 3),
            "verdict": "shared-prefix rows win here: `train.share_prefix: null` could turn them on on this GPU" if wins
            else "padded rows stay the GPU default (shared-prefix rows need 5% more tokens/s at most 5% more memory)"}


def add_ratios(report: dict[str, Any]) -> None:
    """The issue's targets, from what was measured: LoRA MFU, QLoRA's memory against LoRA's, multitune
    against TRL. A target whose inputs are missing says so."""
    s = report["sections"]

    def get(section: str, layout: str, key: str) -> Any:
        value = s.get(section, {}).get(layout, {})
        return value.get(key) if isinstance(value, dict) else None

    targets: dict[str, Any] = {}
    mfu = get("lora", "packed", "mfu_datasheet_peak")
    targets["lora_mfu_datasheet_packed >= 0.40"] = _verdict(mfu, mfu >= 0.40 if isinstance(mfu, float) else None)
    lora_mem, qlora_mem = get("lora", "packed", "peak_memory_gib"), get("qlora", "packed", "peak_memory_gib")
    ratio = qlora_mem / lora_mem if isinstance(lora_mem, float) and isinstance(qlora_mem, float) else None
    targets["qlora_peak_over_lora_peak <= 0.5"] = _verdict(ratio, ratio <= 0.5 if ratio is not None else None)
    # Packed against packed; and each tool's default, what a user gets: multitune's default layout for the
    # device against TRL's padded batches (SFTTrainer's packing is off by default).
    default = s.get("lora", {}).get("default_layout", "padded")
    for name, ours_layout, trl_layout in [("packed", "packed", "packed"), ("defaults", default, "padded")]:
        ours, theirs = get("lora", ours_layout, "tokens_per_s"), get("trl", trl_layout, "tokens_per_s")
        r = ours / theirs if ours and theirs else None
        targets[f"multitune_over_trl_tokens_per_s_{name} >= 1.5"] = _verdict(r, r >= 1.5 if r is not None else None)
    report["targets"] = targets


def _verdict(value: Any, met: bool | None) -> dict[str, Any]:
    if met is None:
        return {"value": value if value is not None else "not measured", "met": "not measured"}
    return {"value": round(value, 4), "met": met}
