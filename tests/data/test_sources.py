"""Every kind of source reads into the same rows, and every broken one ends in one message naming the file,
line or Hub id. No test touches the network: HF_HUB_OFFLINE=1 makes a Hub miss fail at once."""

import gzip
import json

import datasets
import pytest
from data_helpers import task, write_jsonl

from multitune.data.sources import load_rows
from multitune.errors import UserError

ROWS = [{"text": "my car was hit", "label": "Claim"}, {"text": "new address please", "label": "Not a Claim"},
        {"text": "a pipe burst", "label": "Claim"}]


def read(source, **keys):
    return load_rows(task(kind="classification", source=str(source), **keys))


def as_list(rows):
    return [{"text": r["text"], "label": r["label"]} for r in rows]


@pytest.mark.parametrize("name", ["rows.csv", "rows.tsv", "rows.jsonl", "rows.json", "rows.parquet", "rows.jsonl.gz"])
def test_every_local_format_reads_the_same_rows(tmp_path, name):
    path = tmp_path / name
    if name.endswith((".csv", ".tsv")):
        sep = "\t" if name.endswith(".tsv") else ","
        path.write_text("text" + sep + "label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in ROWS))
    elif name == "rows.json":
        path.write_text(json.dumps(ROWS))
    elif name == "rows.parquet":
        datasets.Dataset.from_list(ROWS).to_parquet(str(path))
    elif name.endswith(".gz"):
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    else:
        write_jsonl(path, ROWS)
    assert as_list(read(path)) == ROWS


def test_split_slices_and_max_rows(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert [r["text"] for r in read(path, split="train[1:]")] == ["new address please", "a pipe burst"]
    assert len(read(path, max_rows=2)) == 2
    assert len(read(path, split="anything")) == 3  # a single file is whatever split is asked for


def test_a_folder_takes_its_splits_from_file_names(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS[:2])
    write_jsonl(folder / "validation.jsonl", ROWS[2:])
    assert as_list(read(folder)) == ROWS[:2]
    assert as_list(read(folder, split="validation")) == ROWS[2:]
    with pytest.raises(UserError, match="Unknown split \"test\"") as e:
        read(folder, split="test")
    assert "tasks.t.split" in e.value.fix


def test_a_folder_of_unnamed_parts_is_one_train_split(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    write_jsonl(folder / "part-0.jsonl", ROWS[:1])
    write_jsonl(folder / "part-1.jsonl", ROWS[1:])
    assert sorted(r["text"] for r in read(folder)) == sorted(r["text"] for r in ROWS)


def test_a_folder_that_mixes_formats_is_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.csv").write_text("text,label\nx,y\n")
    with pytest.raises(UserError, match=r"mixes file types \(.csv, .jsonl\)"):
        read(tmp_path)


def test_save_to_disk_folders(tmp_path):
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds.select([0, 1]), "validation": ds.select([2])}).save_to_disk(str(tmp_path / "dict"))
    assert as_list(read(tmp_path / "one")) == ROWS
    assert as_list(read(tmp_path / "dict", split="validation")) == ROWS[2:]
    with pytest.raises(UserError, match="split 'test' is not in the saved dataset; it has train, validation"):
        read(tmp_path / "dict", split="test")


def test_class_label_names_survive_parquet(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["Not a Claim", "Claim"])})
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]}, features=features).to_parquet(str(tmp_path / "c.parquet"))
    rows = read(tmp_path / "c.parquet")
    assert rows.features["label"].names == ["Not a Claim", "Claim"] and rows["label"][:] == [1, 0]


# --- broken files: one message each, with the file and the line -----------------------------------


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n{"text": "c" "label": "y"}\n')
    with pytest.raises(UserError) as e:
        read(path)
    assert e.value.where == f"{path}:4"
    assert "malformed JSON on line 4" in e.value.what


def test_a_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2 holds a JSON list, not an object"):
        read(path)


def test_malformed_json_document(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "a", "label": "x"},\n  {"text": "b" "label": "y"}\n]\n')
    with pytest.raises(UserError, match="malformed JSON on line 3") as e:
        read(path)
    assert e.value.where == f"{path}:3"


@pytest.mark.parametrize("name", ["latin.csv", "latin.jsonl"])
def test_a_file_that_is_not_utf8_names_the_line(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_bytes("text,label\nfine,x\ncaf\xe9 au lait,y\n".encode("latin-1"))
    else:
        path.write_bytes('{"text": "fine", "label": "x"}\n{"text": "caf\xe9", "label": "y"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text: byte 0xe9 on line [23]") as e:
        read(path)
    assert "iconv" in e.value.fix


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl", "empty.parquet"])
def test_an_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content if not name.endswith(".parquet") else "")
    with pytest.raises(UserError, match="the file is empty") as e:
        read(path)
    assert e.value.where == str(path)


def test_a_csv_with_only_a_header(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("text,label\n")
    with pytest.raises(UserError, match="holds no rows"):
        read(path)


def test_a_csv_row_with_too_many_fields(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,x\nnot, quoted,y\n")
    with pytest.raises(UserError, match="line 3 has 3 fields where the header has 2") as e:
        read(path)
    assert e.value.where == f"{path}:3"


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "rows.xlsx").write_bytes(b"PK")
    with pytest.raises(UserError, match=r"unsupported file type .xlsx"):
        read(tmp_path / "rows.xlsx")
    with pytest.raises(UserError, match="data file not found: .*missing.csv"):
        read(tmp_path / "missing.csv")
    with pytest.raises(UserError, match="data file not found"):
        read("data/sub/dir/rows")  # too many slashes for a Hub id: a mistyped path


# --- the Hub: real datasets.load_dataset calls, failing fast offline ------------------------------


def test_an_unreachable_hub_dataset_says_so_at_once():
    with pytest.raises(UserError, match="could not reach the Hugging Face Hub for dataset 'PolyAI/banking77'") as e:
        read("PolyAI/banking77")
    assert e.value.where == "task t" and "local path" in e.value.fix


def hub_raising(monkeypatch, error):
    """Let datasets' own Hub code run up to the download, which fails with the Hub's `error`."""
    import huggingface_hub

    monkeypatch.setattr("datasets.load._raise_if_offline_mode_is_enabled", lambda *a, **k: None)
    monkeypatch.setattr("datasets.load.HfApi.hf_hub_download", lambda *a, **k: (_ for _ in ()).throw(error))
    return huggingface_hub


@pytest.mark.parametrize("status", [401, 403])
def test_a_gated_dataset_says_how_to_get_access(monkeypatch, status):
    import httpx
    from huggingface_hub.errors import GatedRepoError

    response = httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co"))
    hub_raising(monkeypatch, GatedRepoError("gated", response=response))
    with pytest.raises(UserError, match="dataset 'someone/gated-set' is gated") as e:
        read("someone/gated-set")
    assert "https://huggingface.co/datasets/someone/gated-set" in e.value.fix
    assert "huggingface-cli login" in e.value.fix


def test_a_missing_or_private_dataset(monkeypatch):
    import httpx
    from huggingface_hub.errors import RepositoryNotFoundError

    response = httpx.Response(404, request=httpx.Request("GET", "https://huggingface.co"))
    hub_raising(monkeypatch, RepositoryNotFoundError("nope", response=response))
    with pytest.raises(UserError, match="'someone/nothing' was not found on the Hub, or it is private") as e:
        read("someone/nothing")
    assert "huggingface-cli login" in e.value.fix


def test_hub_arguments_are_passed_through(monkeypatch):
    seen = {}

    def fake(path, **kwargs):
        seen.update(kwargs, path=path)
        return datasets.Dataset.from_list(ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    rows = read("PolyAI/banking77", config_name="default", revision="abc123", split="train[:2]")
    assert len(rows) == 3
    assert seen == {"path": "PolyAI/banking77", "name": "default", "split": "train[:2]", "revision": "abc123",
                    "token": None}


def test_a_dataset_with_several_configurations(monkeypatch):
    def fake(path, **kwargs):
        raise ValueError("Config name is missing.\nPlease pick one among the available configs: ['a', 'b']"
                         "\nExample of usage:\n\t`load_dataset('x', 'a')`")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    with pytest.raises(UserError, match=r"several configurations: \['a', 'b'\]") as e:
        read("some/multi")
    assert e.value.fix == "set tasks.t.config_name to one of them"
