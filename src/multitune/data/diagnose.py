"""Why a local data file could not be read, in one message with the file and line.

`datasets` reads files fast but reports problems as parser internals ("JSON parse error ... in row 2" where
the row counts from the start of a block, not the file). When a read fails, these functions look at the
file themselves to find the first real problem: bytes that are not UTF-8, a malformed JSON line, a CSV
row with the wrong number of fields. They run only on the error path, so reading costs nothing extra.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path

from multitune.errors import UserError

COMPRESSED = {".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip"}
UTF8_FIX = "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`)"


def check_file(path: Path) -> None:
    """Refuse an empty file, and a text file that is not UTF-8, before `datasets` reads it.

    The UTF-8 check cannot wait for the error path: `datasets` turns invalid bytes in a JSON file into
    string cells without complaint, and they fail much later, when a row is read. Text files are read
    once in chunks (about 1 GB/s), binary and compressed ones only checked for size.
    """
    empty = UserError("the file is empty", where=str(path), fix="point the source at a file with rows")
    if path.stat().st_size == 0:
        raise empty
    if path.suffix.lower() in COMPRESSED or path.suffix.lower() == ".parquet":
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    blank = True
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            blank = blank and not chunk.strip()
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError:
                problem = _not_utf8(path, path.read_bytes())  # the error path: find the line
                assert problem is not None
                raise problem from None
    if blank:
        raise empty


def read_error(path: Path, fmt: str, error: BaseException) -> UserError:
    """The clearest message for a failed read of `path` (format `fmt`: csv, json or parquet)."""
    if fmt in ("csv", "json") and path.suffix.lower() not in COMPRESSED:
        data = path.read_bytes()
        problem = _not_utf8(path, data)
        if problem is None and fmt == "json":
            problem = _json_problem(path, data.decode("utf-8-sig"))
        if problem is None and fmt == "csv":
            problem = _csv_problem(path, error)
        if problem is not None:
            return problem
    cause = root_cause(error)
    if "corresponds to no data" in cause:
        return UserError("the file holds no rows (only a header, or an empty list)", where=str(path),
                         fix="add rows, or point the source at another file")
    return UserError(f"could not read the file as {fmt}: {cause}", where=str(path),
                     fix="check that the file is what its extension says")


def _not_utf8(path: Path, data: bytes) -> UserError | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        return UserError(f"not UTF-8 text: byte 0x{data[e.start]:02x} on line {line} cannot be decoded",
                         where=f"{path}:{line}", fix=UTF8_FIX)
    return None


def _json_problem(path: Path, text: str) -> UserError | None:
    """The first malformed line of a JSON-lines file, or the error position in a one-document file."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if text.lstrip().startswith("["):  # one document, a list of rows
            return _malformed(path, e.lineno, e.colno, e.msg)
    else:
        if isinstance(doc, list) and not all(isinstance(r, dict) for r in doc):
            return UserError("the list holds items that are not JSON objects", where=str(path),
                             fix="each row must be an object, e.g. {\"text\": ..., \"label\": ...}")
        return None  # a valid document: the problem is elsewhere
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            return _malformed(path, number, e.colno, e.msg)
        if not isinstance(value, dict):
            return UserError(f"line {number} holds a JSON {type(value).__name__}, not an object",
                             where=f"{path}:{number}",
                             fix="each line of a JSON-lines file must be one object, e.g. {\"text\": ...}")
    return None


def _malformed(path: Path, line: int, column: int, msg: str) -> UserError:
    return UserError(f"malformed JSON on line {line}, column {column}: {msg}", where=f"{path}:{line}",
                     fix="fix or remove that line (each line of a JSON-lines file is one complete object)")


def _csv_problem(path: Path, error: BaseException) -> UserError | None:
    cause = root_cause(error)
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", cause)
    if m:
        expected, line, saw = m.groups()
        return UserError(f"malformed CSV: line {line} has {saw} fields where the header has {expected}",
                         where=f"{path}:{line}",
                         fix="quote fields that contain the delimiter (\"a, b\"), or fix the line")
    if "EmptyDataError" in cause or "No columns to parse" in cause:
        return UserError("the file is empty", where=str(path), fix="point the source at a file with rows")
    return None


def root_cause(e: BaseException) -> str:
    """`Type: message` of the innermost cause, where the library's real complaint is."""
    while e.__cause__ is not None:
        e = e.__cause__
    return f"{type(e).__name__}: {e}".strip()
