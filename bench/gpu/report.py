"""bench/gpu/check.py's JSON as markdown tables: what goes into docs/benchmarks.md."""

from __future__ import annotations

from typing import Any

METHODS = ["lora", "qlora", "dora", "full", "lora_checkpointing"]
LAUNCHES = ["launch_single", "launch_fsdp", "launch_fsdp_qlora"]


def markdown(report: dict[str, Any]) -> str:
    s = report["sections"]
    lines = [f"# GPU check ({report['mode']})", "", f"Command: `{report['command']}`; started {report['started']}, "
             f"{report.get('wall_s', 0)} s in all.", ""]
    lines += _environment(s.get("environment", {}))
    lines += _defaults(s.get("defaults"))
    lines += ["## Methods (multitune's train_step, the defaults above)", "",
              "| method | layers | layout | tokens/s | s/step | peak GiB | MFU measured | MFU datasheet | "
              "TFLOP/step | loss first -> last |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in METHODS:
        lines += _method_rows(name, s.get(name))
    lines += ["", "## Shared-prefix rows against padded rows (LoRA, same examples)", ""] + _share_prefix(s.get("share_prefix"))
    lines += ["", "## Evaluation (eval.runner.evaluate)", ""] + _eval(s.get("eval"))
    lines += ["", "## TRL SFTTrainer + PEFT, same LoRA step", "", "| layout | tokens/s | s/step | peak GiB | "
              "loss first -> last | multitune tokens/s | ratio |", "|---|---|---|---|---|---|---|"]
    lines += _trl_rows(s.get("trl"), s.get("lora"))
    lines += ["", "## Launched runs: steps, checkpoint, resume, final adapter", "",
              "| topology | layers | checkpoint | resumed steps | same loss | adapter tensors at full shape |",
              "|---|---|---|---|---|---|"]
    for name in LAUNCHES:
        lines += [_launch_row(name, s.get(name))]
    lines += ["", "## torch.compile and the logits", ""] + _compile_and_logits(s.get("compile"), s.get("logits"))
    lines += ["", "## Targets", ""] + [f"- {k}: {v['value']} -> {v['met']}" for k, v in report.get("targets", {}).items()]
    errors = [f"- {k}: {v['error'].splitlines()[0]}" for k, v in s.items() if isinstance(v, dict) and "error" in v]
    return "\n".join(lines + (["", "## Errors", "", *errors] if errors else []) + [""])


def _environment(env: dict[str, Any]) -> list[str]:
    if "doctor" not in env:
        return [f"Environment: {_status(env)}", ""]
    peak = env.get("peak", {})
    return ["## Environment", "", "```", *env["doctor"], "```", "",
            f"GPU: {env.get('gpu')}; bf16 matmul peak measured {peak.get('measured_tflops')} TFLOP/s "
            f"({peak.get('how', '')}), datasheet {peak.get('datasheet_tflops')} TFLOP/s.",
            f"Versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items())}.", ""]


def _defaults(d: Any) -> list[str]:
    if not isinstance(d, dict) or "lora" not in d:
        return [f"Defaults: {_status(d)}", ""]
    lines = [f"## Defaults resolved for this device ({d['device']}, bf16 {d['bf16']})", "",
             "| method | layout | mixed precision | weights | adapters' input cast | TF32 | a run prints |",
             "|---|---|---|---|---|---|---|"]
    for method in ("lora", "qlora", "dora", "full"):
        m = d[method]
        lines.append(f"| {method} | {m['layout']} | {m['mixed_precision']} | {m['dtype']} | {m['adapter_input_cast']} | "
                     f"{m['tf32']} | {m['run_prints']} |")
    return lines + [""]


def _method_rows(name: str, result: Any) -> list[str]:
    if not isinstance(result, dict) or "layouts" not in result:
        return [f"| {name} | | | {_status(result)} | | | | | | |"]
    rows = []
    for layout in result["layouts"]:
        r = result[layout]
        flops = r["tflop_per_step"]
        shown = layout + (" (default)" if layout == result["default_layout"] else "")
        rows.append(f"| {name} | {result['layers']} | {shown} x{r['micro_batch_size']} | {r['tokens_per_s']:,.0f} | "
                    f"{r['step_s']} | {r['peak_memory_gib']} | {_pct(r['mfu_measured_peak'])} | "
                    f"{_pct(r['mfu_datasheet_peak'])} | {flops['total']} | {r['losses'][0]} -> {r['losses'][-1]} |")
    return rows


def _share_prefix(result: Any) -> list[str]:
    if not isinstance(result, dict) or "verdict" not in result:
        return [f"- {_status(result)}"]
    lines = ["| layout | tokens/s | s/step | peak GiB | positions/step | real tokens/step | first loss |",
             "|---|---|---|---|---|---|---|"]
    for layout in ("padded", "shared_prefix"):
        r = result[layout].get(layout) if isinstance(result[layout], dict) else None
        if not isinstance(r, dict):
            lines.append(f"| {layout} | {_status(result[layout])} | | | | | |")
            continue
        lines.append(f"| {layout} x{r['micro_batch_size']} | {r['tokens_per_s']:,.0f} | {r['step_s']} | "
                     f"{r['peak_memory_gib']} | {r['positions_per_step']:,.0f} | {r['real_tokens_per_step']:,.0f} | "
                     f"{r['losses'][0]} |")
    ratios = ", ".join(f"{k} {result[k]}" for k in ("speedup", "peak_memory_ratio", "positions_ratio",
                                                    "first_loss_relative_difference") if k in result)
    return lines + ["", f"Shared-prefix over padded: {ratios}. {result['verdict']}."]


def _eval(result: Any) -> list[str]:
    if not isinstance(result, dict) or "settings" not in result:
        return [f"- {_status(result)}"]
    lines = [f"{result['layers']} layers, {result['settings']['run_prints']}, {result['method']} attached, "
             f"micro-batch {result['micro_batch_size']}, weights {result['weights_gib']} GiB.", "",
             "| task | kind | candidates (tree nodes) | rows | scoring rows/s | forward calls | peak GiB | "
             "generated rows | generation rows/s | forward calls | peak GiB | accuracy | gen. accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in result.items():
        if not isinstance(t, dict) or "scoring" not in t:
            continue
        sc, g, m = t["scoring"], t["generation"], t["metrics"]
        lines.append(f"| {name} | {t['kind']} | {t['candidates']} ({t['tree_nodes']}) | {m.get('rows', 0):.0f} | "
                     f"{sc['rows_per_s']} | {sc['forward_calls']} | {sc['peak_memory_gib']} | {m.get('gen_rows', 0):.0f} | "
                     f"{g['rows_per_s']} | {g['forward_calls']} | {g['peak_memory_gib']} | {m.get('accuracy')} | "
                     f"{m.get('gen_accuracy')} |")
    return lines


def _trl_rows(trl: Any, lora: Any) -> list[str]:
    """TRL's packed and padded steps against multitune's packed rows and its default layout."""
    if not isinstance(trl, dict) or "packed" not in trl:
        return [f"| | {_status(trl)} | | | | | |"]
    lora = lora if isinstance(lora, dict) else {}
    rows = []
    for layout, ours_layout in [("packed", "packed"), ("padded", lora.get("default_layout", "padded"))]:
        r, ours = trl.get(layout), lora.get(ours_layout)
        if not isinstance(r, dict):
            continue
        ours_tps = ours["tokens_per_s"] if isinstance(ours, dict) else None
        ratio = f"{ours_tps / r['tokens_per_s']:.2f}x" if ours_tps else "n/a"
        rows.append(f"| {layout} | {r['tokens_per_s']:,.0f} | {r['step_s']} | {r['peak_memory_gib']} | "
                    f"{r['losses'][0]} -> {r['losses'][-1]} | {ours_tps or 'n/a'} ({ours_layout}) | {ratio} |")
    return rows


def _launch_row(name: str, r: Any) -> str:
    if not isinstance(r, dict) or "resumed_steps" not in r:
        return f"| {name} | | {_status(r)} | | | |"
    adapter = r["adapter"]
    same = "exactly" if r["same_loss_exactly"] else ("within 1e-3" if r["same_loss_within_1e-3"] else "NO")
    return (f"| {name} | {r['layers']} | {r['checkpoint']} | {r['resumed_steps']} | {same} | "
            f"{adapter.get('tensors')}/{adapter.get('expected_tensors')}, all full: {adapter.get('all_full_shape')} |")


def _compile_and_logits(compiled: Any, logits: Any) -> list[str]:
    lines = []
    if isinstance(compiled, dict) and "eager" in compiled:
        e, c = compiled["eager"]["packed"], compiled["compiled"]["packed"]
        lines.append(f"- compile ({compiled['backend']}, {compiled['layers']} layers, packed): eager "
                     f"{e['tokens_per_s']:,.0f} tokens/s, compiled {c['tokens_per_s']:,.0f} tokens/s "
                     f"(x{compiled['speedup']}), compile time {compiled['compile_s']} s, peak GiB "
                     f"{e['peak_memory_gib']} -> {c['peak_memory_gib']}")
    else:
        lines.append(f"- compile: {_status(compiled)}")
    if isinstance(logits, dict) and "plain" in logits:
        for layout in logits["answer_only"]["layouts"]:
            a, p = logits["answer_only"][layout], logits["plain"][layout]
            lines.append(f"- logits ({logits['layers']} layers, vocabulary {logits['vocab']:,}, {layout}): answer-only "
                         f"{a['tokens_per_s']:,.0f} tokens/s, {a['peak_memory_gib']} GiB; plain "
                         f"{p['tokens_per_s']:,.0f} tokens/s, {p['peak_memory_gib']} GiB")
        lines.append(f"- Liger: {logits['liger']}")
    else:
        lines.append(f"- logits: {_status(logits)}")
    return lines


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, float) else str(x)


def _status(result: Any) -> str:
    if not isinstance(result, dict):
        return "not run"
    if "error" in result:
        return "ERROR: " + result["error"].splitlines()[0][:160]
    return str(result.get("status", "not run"))
