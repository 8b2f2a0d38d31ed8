"""Hostile and broken data files: one clear error naming file, row and field, bounded cost, nothing written.

The loader is driven directly and through `deepsynth train --data F` (exit code 2, one `error:`
line, no traceback, no output folder).
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from deepsynth.cli import main
from deepsynth.data import (
    MAX_IMAGE_PIXELS,
    MAX_LINE_BYTES,
    MAX_ROWS,
    MAX_TEXT_BYTES,
    DataError,
    check_documents,
    load_documents,
    render_document,
)

ROW = {"text": "Le marché aura lieu samedi.", "summary": "Marché samedi."}
DEEP = "[" * 100_000 + "]" * 100_000


def png_bytes(size: tuple[int, int] = (32, 20), color: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` pixels and holds (almost) none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def with_image(folder: Path, name: str, data: bytes, *rows: dict) -> bytes:
    """Write the image file ``name`` beside the data file; return the data file's lines."""
    (folder / name).write_bytes(data)
    return jsonl(*rows)


def parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_documents(path, **kwargs)
    return str(info.value)


def snapshot(folder: Path) -> set[tuple[str, int]]:
    return {(str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*")}


# Each case: file name, its bytes (given the folder, for files next to it), words the message must hold.
HOSTILE: list[tuple[str, Callable[[Path], bytes], tuple[str, ...]]] = [
    ("deep.jsonl", lambda d: ('{"text": "a", "summary": ' + DEEP + "}\n").encode(), ("line 1", "nested too deeply")),
    ("deep.json", lambda d: DEEP.encode(), ("item 1", "nested too deeply")),
    ("deep_item.json", lambda d: b'[{"text": "a", "summary": "b"}, ' + DEEP.encode() + b"]",
     ("item 2", "nested too deeply")),
    ("long_path.jsonl", lambda d: jsonl({"image": "a" * 300 + ".png", "summary": "s"}),
     ("line 1", "column 'image'", "too long", "255 bytes")),
    ("nul_path.jsonl", lambda d: jsonl({"image": "a\0.png", "summary": "s"}), ("line 1", "column 'image'", "NUL")),
    ("garbage.jsonl", lambda d: bytes(range(128, 256)) * 20, ("line 1", "not valid UTF-8")),
    ("garbage.csv", lambda d: b"text,summary\n" + bytes(range(256)) * 4, ("row 2", "column 'summary'")),
    ("garbage.parquet", lambda d: os.urandom(2000), ("could not be read as Parquet",)),
    ("utf16.csv", lambda d: "text,summary\nun,deux\n".encode("utf-16"), ("line 1", "not valid UTF-8", "0xFF")),
    ("latin1.jsonl", lambda d: '{"text": "été", "summary": "x"}\n'.encode("latin-1"),
     ("line 1", "column 'text'", "not valid UTF-8")),
    ("huge_number.jsonl", lambda d: b'{"text": "a", "summary": ' + b"9" * 5000 + b"}\n", ("line 1", "4,300 digits")),
    ("infinite.jsonl", lambda d: b'{"text": "a", "summary": 1e999}\n', ("line 1", "column 'summary'", "float inf")),
    ("nan.jsonl", lambda d: b'{"text": NaN, "summary": "x"}\n', ("line 1", "column 'text'", "float nan")),
    ("empty.jsonl", lambda d: b"", ("no rows",)),
    ("bom_only.jsonl", lambda d: b"\xef\xbb\xbf", ("no rows",)),
    ("empty.csv", lambda d: b"", ("no rows",)),
    ("empty.parquet", lambda d: b"", ("could not be read as Parquet",)),
    ("lone_surrogate.jsonl", lambda d: b'{"text": "a \\ud800 b", "summary": "x"}\n',
     ("line 1", "column 'text'", "\\ud800", "surrogate")),
    ("nested_split.jsonl", lambda d: jsonl({**ROW, "split": {"name": ["train"]}}), ("line 1", "column 'split'")),
    ("ints.parquet", lambda d: parquet(pa.table({"text": [1], "summary": [2]})),
     ("row 1", "column 'summary'", "got int 2")),
    ("struct.parquet", lambda d: parquet(pa.table({"text": ["a"], "summary": [{"k": [1, 2]}]})),
     ("row 1", "column 'summary'", "got dict")),
    ("garbage_image.parquet", lambda d: parquet(pa.table({"summary": ["s"], "image": [b"\x89PNG not really"]})),
     ("row 1", "column 'image'", "not an image")),
    ("not_an_image.jsonl", lambda d: with_image(d, "fake.png", b"hello", {"summary": "s", "image": "fake.png"}),
     ("line 1", "column 'image'", "fake.png", "not an image")),
    ("truncated.jsonl", lambda d: with_image(d, "cut.png", png_bytes((300, 300), "red")[:150],
                                             {"summary": "s", "image": "cut.png"}),
     ("line 1", "column 'image'", "cut.png", "truncated")),
    ("bomb.jsonl", lambda d: with_image(d, "bomb.png", png_header_only(20_000, 20_000),
                                        {"summary": "s", "image": "bomb.png"}),
     ("line 1", "column 'image'", "bomb.png", "megapixels")),
    ("big_image.jsonl", lambda d: with_image(d, "big.png", png_header_only(9_000, 9_000),
                                             ROW, {"summary": "s", "image": "big.png"}),
     ("line 2", "column 'image'", "81 megapixels", "at most 50")),
    ("folder_image.jsonl", lambda d: jsonl({"summary": "s", "image": "."}), ("line 1", "not a regular file")),
    ("device_image.jsonl", lambda d: jsonl({"summary": "s", "image": "/dev/zero"}), ("line 1", "not a regular file")),
]


@pytest.mark.parametrize(("name", "content", "words"), HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_file_is_one_data_error_naming_file_row_and_field(tmp_path, name, content, words):
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    before = snapshot(tmp_path)
    message = error_of(path)
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, (word, message)
    assert len(message) < 600  # a hostile value is never echoed whole
    assert snapshot(tmp_path) == before  # nothing written beside the data


def test_decompression_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_header_only(12_000, 12_000))  # 144 MP: Pillow itself only warns
    path = tmp_path / "d.jsonl"
    path.write_bytes(jsonl({"summary": "s", "image": "bomb.png"}))
    tracemalloc.start()
    message = error_of(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "12,000×12,000" in message and f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels" in message
    assert peak < 20 * 2**20  # 144 million pixels would take 144 MB (432 MB as RGB)


def test_huge_jsonl_line_fails_fast_with_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    text = "mot " * (5 * 2**20)  # a 20 MB line: minutes of CPU before the limit
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({"text": text, "summary": "x"}) + "\n", encoding="utf-8")
    del text
    start = time.process_time()
    tracemalloc.start()
    message = error_of(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.process_time() - start < 2.0
    assert peak < 8 * MAX_LINE_BYTES  # the line is never held whole, nor parsed
    assert message.startswith(f"{path}, line 2: is longer than 1 MB"), message


def test_text_cell_over_the_limit_is_named(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text("text,summary\nshort,ok\n" + "x" * (MAX_TEXT_BYTES + 10) + ",ok\n", encoding="utf-8")
    message = error_of(path)
    assert "row 3, column 'text'" in message and "at most 1 MB" in message


def test_a_text_just_under_the_limits_loads_and_renders_in_a_moment(tmp_path):
    # One 1 MB "word" (no spaces) used to reach Pillow's 1M-character limit; a 1 MB text took ~20 s to wrap.
    for text in ("mot " * (MAX_TEXT_BYTES // 4 - 64), "x" * (MAX_TEXT_BYTES - 64)):
        path = tmp_path / "long.jsonl"
        path.write_text(json.dumps({"text": text, "summary": "s"}) + "\n", encoding="utf-8")
        start = time.process_time()
        page = load_documents(path)[0]["image"]
        assert time.process_time() - start < 3.0
        assert page.size == render_document("x").size


def test_more_rows_than_the_limit_is_one_error(tmp_path):
    path = tmp_path / "many.csv"
    path.write_text("text,summary\n" + "a,b\n" * (MAX_ROWS + 1), encoding="utf-8")
    assert f"at most {MAX_ROWS:,} rows" in error_of(path)
    lines = tmp_path / "many.jsonl"
    lines.write_bytes(jsonl(ROW) * (MAX_ROWS + 1))
    assert f"at most {MAX_ROWS:,} rows" in error_of(lines, max_samples=1)


def test_parquet_with_unreadable_datasets_metadata_still_loads(tmp_path):
    table = pa.table({"text": ["a b c"], "summary": ["abc"]}).replace_schema_metadata({b"huggingface": b"{not json"})
    pq.write_table(table, tmp_path / "meta.parquet")
    assert load_documents(tmp_path / "meta.parquet")["summary"] == ["abc"]


def test_split_with_only_eval_rows_is_refused_naming_the_split_column(tmp_path):
    path = tmp_path / "eval_only.jsonl"
    path.write_bytes(jsonl({**ROW, "split": "eval"}, {**ROW, "split": "eval"}))
    with pytest.raises(DataError) as info:
        check_documents(path)
    assert info.value.column == "split" and "'eval': 2" in str(info.value) and "'train'" in str(info.value)
    assert "column 'split'" in error_of(path, split="train")  # what the trainer asks for
    path.write_bytes(jsonl({**ROW, "split": "train"}, {**ROW, "split": "eval"}, ROW))
    counts = check_documents(path)  # a row without a split value is trained on, as load_documents does
    assert (counts.rows, counts.splits, counts.train_rows) == (3, {"train": 1, "eval": 1}, 2)


# -- image paths: confined for uploads, the user's own on the command line ------------------------


def test_image_paths_of_an_upload_stay_inside_it_and_never_tell_what_exists(tmp_path):
    upload = tmp_path / "upload"
    (upload / "pages").mkdir(parents=True)
    (upload / "pages" / "p1.png").write_bytes(png_bytes())
    outside_png = tmp_path / "secret.png"
    outside_png.write_bytes(png_bytes(color="red"))
    (upload / "pages" / "link.png").symlink_to(outside_png)
    data = upload / "pages" / "data.jsonl"

    def message_for(image: str) -> str:
        data.write_bytes(jsonl({"summary": "s", "image": image}))
        with pytest.raises(DataError) as info:
            check_documents(data, image_root=upload)
        assert info.value.source == str(data) and info.value.location == "line 1" and info.value.column == "image"
        return re.sub(r"image path '.*' (points|starts)", r"image path <path> \1", info.value.problem)

    refused = {image: message_for(image) for image in (
        "/etc/passwd", "/etc/no-such-file", str(outside_png), str(tmp_path / "no-such.png"),
        "../../secret.png", "../../no-such.png", "../../../../../../etc/passwd", "link.png",
    )}
    assert len(set(refused.values())) == 1, refused  # one wording: existence is not revealed
    assert "points outside the uploaded dataset" in next(iter(refused.values()))
    assert str(tmp_path) not in next(iter(refused.values()))
    assert "starts with '~'" in message_for("~/x.png")
    # Inside the upload: relative to the data file, climbing within the upload allowed.
    (upload / "top.png").write_bytes(png_bytes(color="blue"))
    data.write_bytes(jsonl({"summary": "a", "image": "p1.png"}, {"summary": "b", "image": "../top.png"}))
    assert check_documents(data, image_root=upload).rows == 2
    missing = message_for("nope.png")
    assert "not found in the uploaded dataset" in missing and str(upload) not in missing


def test_command_line_paths_are_the_users_own(tmp_path, monkeypatch):
    (tmp_path / "docs" / "scans").mkdir(parents=True)
    (tmp_path / "docs" / "scans" / "p.png").write_bytes(png_bytes(color="red"))
    own = tmp_path / "elsewhere.png"
    own.write_bytes(png_bytes(color="blue"))
    data = tmp_path / "docs" / "data.jsonl"
    data.write_bytes(jsonl({"summary": "a", "image": "scans/p.png"}, {"summary": "b", "image": str(own)}))
    monkeypatch.chdir(tmp_path)  # relative paths follow the data file, not the working directory
    pages = load_documents(Path("docs/data.jsonl"))["image"]
    assert pages[0].getpixel((0, 0)) == (255, 0, 0) and pages[1].getpixel((0, 0)) == (0, 0, 255)


# -- the command line -------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


CLI_CASES = [
    ("deep.jsonl", ('{"text": "a", "summary": ' + DEEP + "}\n").encode(), ("line 1", "nested too deeply")),
    ("long_path.jsonl", jsonl({"image": "é" * 200 + ".png", "summary": "s"}), ("line 1", "column 'image'", "too long")),
    ("huge.jsonl", jsonl(ROW) + b'{"text": "' + b"x" * (3 * MAX_LINE_BYTES) + b'", "summary": "s"}\n',
     ("line 2", "1 MB")),
    ("eval_only.jsonl", jsonl({**ROW, "split": "eval"}), ("column 'split'", "'train'")),
    # Past --max-train-samples 1, in the eval split: still read, still reported.
    ("late_error.jsonl", jsonl(ROW, ROW, {**ROW, "split": "eval"}) + b"{not json\n", ("line 4", "not valid JSON")),
    ("bad_summary.csv", b"text,summary\na,b\nc,\n", ("row 3", "column 'summary'")),
]


@pytest.mark.parametrize(("name", "content", "words"), CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_train_with_bad_data_exits_2_with_one_error_line(tmp_path, capsys, name, content, words):
    data = _write(tmp_path, name, content)
    out = tmp_path / "run"
    code = main(["train", "--data", str(data), "--output-dir", str(out), "--max-train-samples", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {data}"), err
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert "Traceback" not in err
    assert not out.exists()


def test_column_mapping_without_data_is_an_error_not_ignored(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--column-mapping", "summary=target", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --column-mapping") and "--data" in err and "Traceback" not in err
    data = _write(tmp_path, "d.jsonl", jsonl(ROW))
    with pytest.raises(SystemExit) as exited:  # a malformed value is refused by the flag's own parser
        main(["train", "--data", str(data), "--column-mapping", "summary", "--output-dir", str(out)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--column-mapping" in err and "name=value pairs" in err and "Traceback" not in err
    config = _write(tmp_path, "run.json", json.dumps({"column_mapping": {"summary": "target"}}).encode())
    assert main(["train", "--config", str(config), "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: column_mapping")
    assert not out.exists()
