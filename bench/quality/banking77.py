"""The proof that the pipeline learns real data: `multitune train` on banking77 with the tiny model, full
fine-tuning and LoRA, timed end to end (tiny model build, tokenisation, training, final evaluation).

    python -m bench.quality.banking77                 # both configs
    python -m bench.quality.banking77 --only full     # configs/banking77-tiny-full.yaml alone

Each run is a subprocess exactly as a user types it (`python -m multitune train CONFIG output_dir=...`),
with a fresh tiny-model cache so the build is counted. Prints validation accuracy (all 1,998 held-out
rows) and wall time, and writes them to `--out`. Target for full fine-tuning: >= 0.85 in < 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, child_env, stopwatch

CONFIGS = {"full": "configs/banking77-tiny-full.yaml", "lora": "configs/banking77-tiny-lora.yaml"}


def run(name: str, work: Path) -> dict:
    out = work / name
    cache = tempfile.mkdtemp(prefix="multitune-bench-cache-")  # the tiny model is built inside the timing
    cmd = [sys.executable, "-m", "multitune", "train", CONFIGS[name], f"output_dir={out}"]
    with stopwatch() as clock:
        subprocess.run(cmd, cwd=REPO, env=child_env(MULTITUNE_CACHE=cache), check=True)
    after = json.loads((out / "eval" / "metrics.json").read_text())["after"]["banking77"]
    return {"config": CONFIGS[name], "wall_s": clock.seconds, "accuracy": after["accuracy"],
            "macro_f1": after["macro_f1"], "rows": after["rows"], "load_before": clock.load_before,
            "load_after": clock.load_after, "command": " ".join(["python -m multitune train", CONFIGS[name]])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(CONFIGS))
    p.add_argument("--work", default=str(REPO / "runs" / "bench-banking77"))
    p.add_argument("--out", default=str(REPO / "runs" / "bench-banking77" / "results.json"))
    args = p.parse_args()
    results = [run(name, Path(args.work)) for name in ([args.only] if args.only else ["full", "lora"])]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print("| config | validation accuracy | macro-F1 | rows | wall time |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['rows']:.0f} | {r['wall_s'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
