"""Plots and report.html from a run folder written by hand: self-contained, every image a real PNG."""

import base64
import io
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from multitune.eval.metrics import confusion, most_confused
from multitune.io import write_json_atomic
from multitune.report.build import worst_errors, write_report
from multitune.report.plots import loss_curves, metric_curves
from multitune.report.results import Summary, load_summary
from multitune.report.table import before_after

LABELS = [f"intent_{i:02d}" for i in range(77)]


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a["src"])
        if tag in ("a", "link") and "href" in a:
            self.links.append(a["href"])
        self.scripts += tag == "script"


def fake_run(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text("output_dir: run\ntasks:\n- name: b77\n")
    write_json_atomic(run / "data_stats.json", {
        "b77": {"kind": "classification", "source": "x.parquet", "rows": 100, "labels": LABELS,
                "train": {"examples": 80, "tokens": 900, "answer_tokens": 160, "truncated": 0, "dropped_too_long": 0},
                "val": {"examples": 20, "tokens": 200, "answer_tokens": 40, "truncated": 1, "dropped_too_long": 0}},
        "gen": {"kind": "summarization", "source": "d.jsonl", "rows": 10, "train": {}, "val": {}},
    })
    rows = [{"step": s, "train/loss": 3.0 / s, "lr": 0.1} for s in range(1, 11)]
    rows += [{"step": s, "eval/b77/loss": 2.0 / (s + 1), "eval/b77/accuracy": s / 10, "eval/b77/macro_f1": s / 12,
              "eval/gen/loss": 1.5, "eval/gen/rougeL": 0.1 + s / 100, "eval/gen/bleu": 5.0 + s}
             for s in (0, 5, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    gold = [LABELS[i % 77] for i in range(200)]
    pred = [LABELS[(i + (i % 3 == 0)) % 77] for i in range(200)]
    matrix = confusion(gold, pred, LABELS)
    (run / "eval" / "b77").mkdir(parents=True)
    write_json_atomic(run / "eval" / "b77" / "details.json",
                      {"labels": LABELS, "confusion": matrix, "most_confused": most_confused(matrix, LABELS)})
    records = [{"row": i, "index": i, "input": "<script>alert(1)</script> text" if i == 0 else f"text {i}", "gold": g,
                "prediction": p, "score": -0.01 * i, "correct": g == p, "gold_score": -1.0, "answer_tokens": 2}
               for i, (g, p) in enumerate(zip(gold, pred, strict=True))]
    (run / "eval" / "b77" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = Summary(after={"b77": {"loss": 0.2, "accuracy": 0.66, "rows": 200.0}, "gen": {"loss": 1.5, "rougeL": 0.2}},
                      before={"b77": {"loss": 4.0, "accuracy": 0.01, "rows": 200.0}, "gen": {"loss": 2.5, "rougeL": 0.0}},
                      primary={"b77": "accuracy", "gen": "rougeL"}, final_step=10,
                      best={"metric": "mean", "higher_is_better": True, "step": 10, "value": 0.43})
    write_json_atomic(run / "eval" / "metrics.json", summary.to_json())
    return run


def test_report_is_self_contained_with_every_image_embedded(tmp_path):
    run = fake_run(tmp_path)
    page = write_report(run).read_text()
    tags = Tags()
    tags.feed(page)
    assert len(tags.images) == 5  # loss, metrics, confusion of b77, each task's own curves
    for src in tags.images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
    assert tags.links == [] and tags.scripts == 0
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for text in ("Best evaluation by <code>mean</code>", "intent_00", "Most confused pairs", "x.parquet",
                 "output_dir: run", "+0.6500"):
        assert text in page, text
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["confusion_b77.png", "loss.png", "metrics.png",
                                                                 "task_b77.png", "task_gen.png"]


def test_a_77_label_confusion_matrix_is_large_enough_to_read(tmp_path):
    run = fake_run(tmp_path)
    write_report(run)
    width, height = Image.open(run / "plots" / "confusion_b77.png").size
    assert width >= 1400 and height >= 1400  # ~18 px per label row and column, labels in 7 pt


def test_worst_errors_are_the_confident_mistakes():
    records = [{"row": 0, "input": "a", "gold": "x", "prediction": "y", "score": -5.0, "correct": False, "gold_score": -1},
               {"row": 1, "input": "b", "gold": "x", "prediction": "x", "score": -0.1, "correct": True, "gold_score": -1},
               {"row": 2, "input": "c", "gold": "y", "prediction": "x", "score": -0.5, "correct": False, "gold_score": -1}]
    title, rows = worst_errors(records)
    assert "surest" in title and [r["row"] for r in rows] == [2, 0]
    open_records = [{"row": 0, "input": "a", "gold": "g", "prediction": "p", "score": 0.5, "loss": 1.0},
                    {"row": 1, "input": "b", "gold": "g", "prediction": "q", "score": 0.1, "loss": 2.0}]
    assert [r["row"] for r in worst_errors(open_records)[1]] == [1, 0]


def test_curves_need_data_and_the_summary_round_trips(tmp_path):
    assert loss_curves([]) is None and metric_curves([{"step": 1, "train/loss": 1.0}]) is None
    summary = Summary(after={"t": {"loss": math.nan, "accuracy": 1.0}}, primary={"t": "accuracy"})
    write_json_atomic(tmp_path / "eval" / "metrics.json", summary.to_json())
    again = load_summary(tmp_path)
    assert again.after == {"t": {"loss": None, "accuracy": 1.0}} and again.before is None
    assert before_after(again.before, again.after).splitlines()[1:] == [
        "t     loss      -       -       -", "t     accuracy  -       1.0000  -"]


def test_load_summary_of_a_run_without_evaluation_says_what_to_do(tmp_path):
    from multitune.errors import UserError

    with pytest.raises(UserError, match="evaluate the run first"):
        load_summary(tmp_path)


def test_the_report_shows_retention_rows_k_shot_figures_and_a_task_stuck_at_zero_shot(tmp_path):
    run = fake_run(tmp_path)
    stuck = [{"row": i, "index": i, "input": f"q{i}", "gold": "ABCDE"[i % 5], "prediction": "C", "score": -1.0,
              "correct": i % 5 == 2, "gold_score": -1.0, "answer_tokens": 2} for i in range(200)]
    (run / "eval" / "csqa").mkdir()
    (run / "eval" / "csqa" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stuck))
    summary = load_summary(run)
    after = {**summary.after, "csqa": {"loss": 0.81, "accuracy": 0.2, "rows": 200.0}}
    before = {**summary.before, "csqa": {"loss": 5.82, "accuracy": 0.225, "rows": 200.0}}
    shots = {t: {m: v if m == "rows" else v - 0.001 for m, v in ms.items() if v is not None} for t, ms in before.items()}
    shots["b77"]["truncated"] = 3.0
    write_json_atomic(run / "eval" / "metrics.json", Summary(
        after=after, before=before, primary={**summary.primary, "csqa": "accuracy"}, shots=shots, shots_k=3,
        retention=("gen",)).to_json())
    stats = json.loads((run / "data_stats.json").read_text())
    stats["csqa"] = {"kind": "multiple_choice", "source": "c.jsonl", "rows": 1000, "train": {}, "val": {}}
    write_json_atomic(run / "data_stats.json", stats)
    page = write_report(run).read_text()
    assert "<th>3-shot</th>" in page and "prompts cut to data.max_seq_len (oldest turns first): b77 3 of 200" in page
    # The retention task's rows come after the trained tasks', under their heading.
    assert page.index("<td>b77</td>") < page.index("Retention: evaluated, never trained") < page.index("<td>gen</td>")
    assert "(summarization, retention: evaluated, never trained)" in page
    warning = page[page.index("<b>Warning:</b>"):]
    assert warning.startswith("<b>Warning:</b> csqa: accuracy 0.2000 is still at its zero-shot value 0.2250")
    assert "It answers &#x27;C&#x27; to 100% of the rows (20% of the gold answers)" in warning
    assert page.count("<b>Warning:</b>") == 1  # b77 moved; gen is not trained
