"""The plan as one readable table (from the plan.json dict; pure)."""

from __future__ import annotations

from typing import Any

GiB = 1024**3


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def duration(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


TRAINABLE_KINDS = [("lora", "LoRA"), ("dora", "DoRA magnitudes"), ("ia3", "(IA)^3 scales"),
                   ("virtual", "virtual tokens"), ("saved_modules", "saved modules"), ("base", "base")]


def _method_detail(m: dict[str, Any]) -> str:
    if m["method"] in ("prompt_tuning", "prefix_tuning"):
        return f" with {m['virtual_tokens']} virtual tokens"
    if m["method"] == "full":
        return ""
    return (f" r={m['r']}" if m["method"] != "ia3" else "") + f" on {', '.join(m['target_modules'])}"


def render(plan: dict[str, Any]) -> str:
    """Model, memory per process, data, compute, time and cost, advice; measured figures when present."""
    m, mem, t, c, d = plan["model"], plan["memory"], plan["target"], plan["compute"], plan["data"]
    tr = m["trainable"]
    lines = [f"model      {m['name']}: {m['parameters']:,} parameters, {m['layers']} layers, hidden "
             f"{m['hidden_size']}, vocabulary {m['vocab_size']:,} (from {m['source']})",
             f"method     {m['method']}" + _method_detail(m)
             + (f"; modules_to_save {', '.join(m['modules_to_save'])}" if m["modules_to_save"] else ""),
             f"trainable  {tr['total']:,} parameters (" + ", ".join(
                 f"{label} {tr[key]:,}" for key, label in TRAINABLE_KINDS if tr.get(key) or key == "base") + ")",
             f"target     {t['gpus']} x {t['name']}: {gib(t['memory_bytes'])} each ({gib(t['usable_bytes'])} usable), "
             f"{t['tflops']:g} TFLOPS" + (" assumed" if t["assumed_rate"] else " dense bf16"), "",
             "memory per process" + (f" (FSDP: weights, gradients and states are 1/{mem['shards']} shards)"
                                      if mem["shards"] > 1 else "")]
    rows = [(f"weights ({k})", v) for k, v in mem["weights"].items()]
    rows += [("trainable copies (adapters, modules_to_save)", mem["trainable"]), ("gradients", mem["gradients"]),
             ("AdamW states (2 per trainable)", mem["optimizer"])]
    mb = mem["micro_batch"]
    rows += [(f"activations: {k.replace('_', ' ')}", v) for k, v in mem["activations"].items()]
    rows += [("optimizer step temporaries", mem["step_temporary"]), ("FSDP all-gather buffers", mem["fsdp_gather"]),
             ("process (Python, torch, libraries, data; measured)", mem["fixed"]),
             ("CPU allocator: freed blocks kept (~1 micro-batch)", mem.get("allocator_retained", 0.0))]
    lines += [f"  {label:<52} {gib(v):>12}" for label, v in rows if v]
    lines += [f"  {'micro-batch for activations':<52} {mb['rows']} x {mb['width']} positions, "
              f"{mb['logit_positions']} with logits",
              f"  {'peak (max of backward and optimizer step)':<52} {gib(mem['peak']):>12}   "
              + ("fits" if plan["fits"] else "DOES NOT FIT"), ""]
    if plan.get("layouts"):
        lines += _layout_lines(plan["layouts"])
    lines += _data_lines(d, c)
    lines += _time_lines(c, t)
    if plan.get("measured"):
        lines += _measured_lines(plan["measured"])
    if plan["advice"]:
        lines += ["", "to make it fit:"] + [f"  - {a}" for a in plan["advice"]]
    if plan.get("notes"):
        lines += ["", "notes:"] + [f"  - {n}" for n in plan["notes"]]
    return "\n".join(lines)


def _data_lines(d: dict[str, Any], c: dict[str, Any]) -> list[str]:
    lines = [f"data per epoch{' (packed rows)' if d['packed'] else ''}: {d['steps_per_epoch']} optimizer steps of "
             f"{d['global_batch_size']}, {d['total_steps']} steps in all"]
    lines += [f"  {name:<20} {e['examples']:>8,} examples {e['tokens']:>12,} tokens {e['answer_tokens']:>10,} trained"
              for name, e in d["tasks"].items()]
    lines.append(f"  computed positions {c['positions_per_epoch']:,} (real tokens {c['real_tokens_per_epoch']:,}; "
                 "the rest is padding)")
    return lines


def _time_lines(c: dict[str, Any], t: dict[str, Any]) -> list[str]:
    f = c["flops_per_token"]
    lines = ["", f"compute    {f['total'] / 1e9:.3g} GFLOP per position = {f['per_parameter']:.2f} x parameters "
             f"(decoder {f['body'] / 1e9:.3g}, attention {f['attention'] / 1e9:.3g} at mean context "
             f"{c['mean_attention_context']:.0f} (masked rows: all computed), head {f['head'] / 1e9:.3g} on {c['logit_share']:.1%} of positions"
             + (f", recompute {f['recompute'] / 1e9:.3g}" if f["recompute"] else "") + ")",
             f"time       {duration(c['seconds_per_step'])} per step, {duration(c['seconds_per_epoch'])} per epoch, "
             f"{duration(c['hours'] * 3600)} for {c['epochs']:g} epochs "
             + (f"at an assumed MFU of {c['mfu']:.0%}" if t["on_gpu"] else
                f"at an assumed {t['tflops'] * 1000 * c['mfu']:.0f} GFLOP/s (--measure calibrates it)")
             + (f" (optimizer step {duration(c['update_s_per_step'])})" if c["update_s_per_step"] >= 0.01 else "")]
    if c.get("calibrated_hours") is not None:
        lines.append(f"           calibrated by the measurement: {duration(c['calibrated_hours'] * 3600)} for the run")
    if c["cost"] is not None:
        lines.append(f"cost       {c['gpu_hours']:.1f} GPU-hours x ${c['price_per_gpu_hour']:g} = ${c['cost']:,.2f}")
    return lines


def _measured_lines(ms: dict[str, Any]) -> list[str]:
    return ["", f"measured   {ms['steps']} real steps on {ms['device']}:",
            f"  {'':<28} {'estimate':>12} {'measured':>12} {'ratio':>7}",
            f"  {'peak memory':<28} {gib(ms['estimated_peak']):>12} {gib(ms['peak']):>12} "
            f"{ms['peak'] / ms['estimated_peak']:>7.2f}",
            f"  {'time per step':<28} {ms['estimated_step_s']:>10.3f} s {ms['step_s']:>10.3f} s "
            f"{ms['step_s'] / ms['estimated_step_s']:>7.2f}",
            f"  tokens/s {ms['tokens_per_s']:,.0f} (real tokens); achieved {ms['achieved_tflops'] * 1000:.1f} GFLOP/s; "
            f"{ms['memory_kind']}"]


LAYOUTS = {"hsdp": "HSDP: shard in a node, a copy per node", "fsdp": "FSDP: shard over every GPU",
           "ddp": "DDP: a whole copy per GPU"}


def _layout_lines(lay: dict[str, Any]) -> list[str]:
    """Per layout: peak memory per GPU and the bytes each node sends to the others per optimizer step."""
    lines = [f"layouts on {lay['nodes']} node{'s' if lay['nodes'] > 1 else ''} x {lay['gpus_per_node']} GPUs "
             f"(network: what each node sends to the others per step; time at {lay['network_gbits']:g} Gbit/s)"]
    for r in lay["rows"]:
        sent = r["network_bytes_per_step"]
        net = f"{sent / 1e9:10.2f} GB {duration(r['network_s_per_step']):>9}" if lay["nodes"] > 1 else f"{'-':>23}"
        mark = "   <- fits, fewest bytes between nodes" if r["layout"] == lay["choice"] else ""
        lines.append(f"  {LAYOUTS[r['layout']]:<40} {gib(r['peak']):>12} {'fits' if r['fits'] else 'NO':>5}"
                     f" {net}{mark}")
    return lines + [""]
