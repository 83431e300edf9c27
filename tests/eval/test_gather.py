"""Two CPU processes over gloo: each evaluates a shard of odd size, and the gathered metrics are exactly the
single-process ones, with no row lost or counted twice."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gather_worker import results

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def test_two_processes_gather_every_row_exactly_once(tiny_dir, model, tokenizer, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "gather_worker.py"), str(tiny_dir), str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    single = json.loads(json.dumps(results(model, tokenizer, rank=0, world_size=1)))
    assert len(single["claims"]["predictions"]) % 2 == 1  # uneven shards: 6 rows on one process, 5 on the other
    for task, want in single.items():
        for got in (r[task] for r in ranks):
            assert [p["row"] for p in got["predictions"]] == [p["row"] for p in want["predictions"]], task
            assert [p["prediction"] for p in got["predictions"]] == [p["prediction"] for p in want["predictions"]]
            assert got["metrics"]["rows"] == want["metrics"]["rows"] == len(want["predictions"])
            for name, value in want["metrics"].items():
                assert got["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, name)
    assert single["claims"]["metrics"]["gen_rows"] == 3.0
