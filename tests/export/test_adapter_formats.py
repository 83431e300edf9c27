"""Adapters in the serving formats: llama.cpp's adapter GGUF (read back with gguf-py's reader, applied as
llama.cpp applies it: W + alpha / rank x B A, and compared with the merged GGUF), and vLLM's LoRA folder
(checked against what vLLM's loader reads and refuses). bench/export/llamacpp_lora.py runs llama.cpp itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.torch import load_file

from export.finished import adapter_run
from multitune.cli import main
from multitune.errors import UserError
from multitune.export.to_gguf import export_gguf_lora
from multitune.export.vllm import LORA_MODULES, problems

RSLORA = {"method": "lora", "r": 4, "alpha": 8, "use_rslora": True, "dropout": 0.0}


def tensors(path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """(tensors as float32 arrays in numpy's row-major shape, metadata) of a GGUF, by gguf-py's reader."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = {}
    for name, field in reader.fields.items():
        if name.startswith(("general.", "adapter.")) and field.types:
            value = field.parts[field.data[0]]
            fields[name] = bytes(value).decode() if field.types[0].name == "STRING" else float(value[0])
    arrays = {t.name: np.asarray(t.data, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist())))
              for t in reader.tensors}
    return arrays, fields


@pytest.fixture(scope="module")
def lora_exports(tmp_path_factory, tiny_dir, tokenizer):
    """An rsLoRA run on the tiny base, exported as an adapter GGUF (its base GGUF written beside it) and as
    the merged GGUF, both f16."""
    tmp = tmp_path_factory.mktemp("gguf-lora")
    run = adapter_run(tmp / "run", tiny_dir, tokenizer, RSLORA)
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(tmp / "out" / "adapter.gguf")]) == 0
    assert main(["export", str(run), "--format", "gguf", "--output", str(tmp / "merged" / "model.gguf")]) == 0
    return run, tmp


def test_the_adapter_gguf_applied_as_llama_cpp_does_gives_the_merged_gguf(lora_exports):
    _, tmp = lora_exports
    lora, meta = tensors(tmp / "out" / "adapter.gguf")
    base, _ = tensors(tmp / "out" / "adapter-base-f16.gguf")
    merged, _ = tensors(tmp / "merged" / "model.gguf")
    assert meta["general.type"] == "adapter" and meta["adapter.type"] == "lora"
    assert meta["general.architecture"] == "llama"
    # rsLoRA's scale alpha / sqrt(r) = 8 / 2, written as the alpha for which llama.cpp's alpha / r gives it
    assert meta["adapter.lora.alpha"] == pytest.approx(8 * 2)
    pairs = sorted(n.removesuffix(".lora_a") for n in lora if n.endswith(".lora_a"))
    assert len(pairs) == 2 * 7 and all(p in base for p in pairs)  # 2 layers x the 7 projections
    for name in pairs:
        a, b = lora[f"{name}.lora_a"], lora[f"{name}.lora_b"]
        assert a.shape == (4, base[name].shape[1]) and b.shape == (base[name].shape[0], 4)
        applied = base[name] + meta["adapter.lora.alpha"] / b.shape[1] * (b @ a)
        np.testing.assert_allclose(applied, merged[name], rtol=0, atol=2e-3 * np.abs(merged[name]).max() + 1e-3,
                                   err_msg=name)
        assert np.abs(applied - base[name]).max() > 1e-2  # the adapter matters for every weight


def test_the_modelfile_applies_the_adapter_to_the_base(lora_exports):
    _, tmp = lora_exports
    text = (tmp / "out" / "Modelfile").read_text()
    assert "FROM ./adapter-base-f16.gguf\nADAPTER ./adapter.gguf\n" in text


def test_adapters_llama_cpp_cannot_hold_are_refused_with_the_merged_export(run_dir, tmp_path, tiny_dir, tokenizer):
    with pytest.raises(UserError, match="modules_to_save") as e:  # the shared finished run trains the head
        export_gguf_lora(run_dir, tmp_path / "a.gguf")
    assert "--format gguf" in e.value.fix and not (tmp_path / "a.gguf").exists()
    for method, match in [("dora", "DoRA"), ("ia3", "IA3 adapter"), ("prompt_tuning", "virtual tokens")]:
        run = adapter_run(tmp_path / method, tiny_dir, tokenizer, {"method": method, "r": 4, "num_virtual_tokens": 3})
        with pytest.raises(UserError, match=match):
            export_gguf_lora(run, tmp_path / f"{method}.gguf")


def test_the_vllm_folder_holds_what_vllms_loader_reads(lora_exports, tmp_path, capsys):
    run, _ = lora_exports
    out = tmp_path / "vllm"
    assert main(["export", str(run), "--format", "vllm", "--output", str(out), "--base", "org/base"]) == 0
    assert f"vllm serve org/base --enable-lora --lora-modules run={out}" in capsys.readouterr().out
    config = json.loads((out / "adapter_config.json").read_text())
    # PEFTHelper's required fields, and nothing its _validate_features refuses
    assert {"r", "lora_alpha", "target_modules"} <= config.keys() and config["use_rslora"] is True
    assert not config.get("modules_to_save") and not config["use_dora"] and config["bias"] == "none"
    weights = load_file(out / "adapter_model.safetensors")
    assert weights.keys() == load_file(run / "adapter" / "adapter_model.safetensors").keys()
    for key, w in weights.items():
        prefix, module, kind = key.split(".")[:2], key.split(".lora_")[0].rsplit(".", 1)[1], key.split(".lora_")[1]
        assert prefix == ["base_model", "model"] and module in LORA_MODULES and kind in ("A.weight", "B.weight")
        assert w.shape[0 if kind == "A.weight" else 1] == config["r"]
    assert (out / "tokenizer.json").is_file() and problems(config, sorted(weights)) == []


def test_adapters_vllm_refuses_are_refused_with_the_reason_and_the_fix(run_dir, tmp_path, tiny_dir, tokenizer):
    with pytest.raises(UserError, match="modules_to_save being None") as e:
        main_raising(["export", str(run_dir), "--format", "vllm", "--output", str(tmp_path / "v")])
    assert "multitune merge" in e.value.fix and not (tmp_path / "v").exists()
    dora = adapter_run(tmp_path / "dora", tiny_dir, tokenizer, {"method": "dora", "r": 4})
    with pytest.raises(UserError, match="DoRA, which vLLM does not serve"):
        main_raising(["export", str(dora), "--format", "vllm", "--output", str(tmp_path / "v")])
    lora = {"peft_type": "LORA", "r": 1024, "lora_alpha": 16, "bias": "all"}
    found = problems(lora, ["base_model.model.model.embed_tokens.lora_A.weight"])
    assert any("above the largest --max-lora-rank" in p for p in found)
    assert any("--enable-lora-bias" in p for p in found) and any("embed_tokens" in p for p in found)


def main_raising(argv: list[str]) -> None:
    """The CLI's export without its error printing, so the UserError itself can be checked."""
    from multitune.cli import _parser

    args = _parser().parse_args(argv)
    args.func(args)
