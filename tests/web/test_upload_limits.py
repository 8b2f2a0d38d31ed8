"""Uploads whose work was unbounded (issue 21, item 14): a table of 10^6 columns, rows naming thousands
of PDF pages, zip members the data never names. Each is refused in about a second naming its limit,
or (unused members) simply not stored."""

from __future__ import annotations

import io
import sys
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from test_hostile_uploads import assert_refused, jsonl, png_bytes, upload, zip_bytes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pdf_support import pdf_bytes  # noqa: E402

from deepsynth.data.table import MAX_COLUMNS  # noqa: E402
from deepsynth.web.http import import_libraries  # noqa: E402
from deepsynth.web.settings import MAX_UPLOAD_PDF_PAGES  # noqa: E402

QUICK_SECONDS = 3.0  # "under a second" with slack for a loaded 2-core CI machine


def _timed(call):
    import_libraries()  # a fresh server imports transformers once, before its first upload: not the upload's work
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def test_a_csv_of_a_million_columns_is_refused_at_once_naming_the_limit(client, state_dir):
    header = ",".join(f"c{i}" for i in range(1_000_000)).encode()
    content = b"text,summary," + header + b"\nun,deux" + b"," * 1_000_000 + b"\n"
    response, seconds = _timed(lambda: upload(client, "wide.csv", content))
    assert_refused(client, state_dir, response, 422, "wide.csv", "row 1", f"at most {MAX_COLUMNS}")
    assert seconds < QUICK_SECONDS, seconds


def test_a_csv_header_of_a_few_hundred_columns_is_refused_with_its_count(client, state_dir):
    columns = ["text", "summary", *(f"extra{i}" for i in range(MAX_COLUMNS))]
    content = (",".join(columns) + "\n" + ",".join(["un", "deux", *[""] * MAX_COLUMNS]) + "\n").encode()
    assert_refused(client, state_dir, upload(client, "wide.csv", content), 422,
                   f"has {MAX_COLUMNS + 2} columns", f"at most {MAX_COLUMNS}")


def test_a_parquet_file_of_too_many_columns_is_refused_from_its_footer(client, state_dir):
    table = pa.table({"text": ["un"], "summary": ["deux"], **{f"c{i}": [""] for i in range(MAX_COLUMNS)}})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    assert_refused(client, state_dir, upload(client, "wide.parquet", buffer.getvalue()), 422,
                   "wide.parquet", f"at most {MAX_COLUMNS}")


def test_rows_naming_more_pdf_pages_than_the_limit_are_refused_before_rendering(client, state_dir):
    pages = MAX_UPLOAD_PDF_PAGES + 100
    rows = [{"summary": f"page {n}", "image": f"doc.pdf#page={n % 4 + 1}"} for n in range(pages)]
    archive = zip_bytes({"set/targets.jsonl": jsonl(*rows), "set/doc.pdf": pdf_bytes(["a", "b", "c", "d"])})
    response, seconds = _timed(lambda: upload(client, "pages.zip", archive))
    assert_refused(client, state_dir, response, 413, f"{pages:,} PDF pages", f"at most {MAX_UPLOAD_PDF_PAGES}")
    assert seconds < QUICK_SECONDS, seconds


def test_a_zip_keeps_only_the_data_file_and_the_files_its_rows_name(client, state_dir):
    unused = b"\0" * (40 << 20)  # 40 MB of zeros: a few dozen KB compressed
    archive = zip_bytes({"set/targets.jsonl": jsonl({"summary": "s", "image": "scans/p1.png"}),
                         "set/scans/p1.png": png_bytes(), "set/scans/unused.png": png_bytes("red"),
                         "set/padding.bin": unused, "elsewhere/notes.txt": b"not named"})
    assert len(archive) < 200_000
    response = upload(client, "scans.zip", archive)
    assert response.status_code == 201, response.text
    folder = state_dir / "datasets" / response.json()["id"]
    stored = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert stored == ["meta.json", "set/scans/p1.png", "set/targets.jsonl"]
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 50_000
    # And the dataset still trains from what it kept.
    assert client.post("/api/trainer/plan", json={"dataset_id": response.json()["id"]}).status_code == 200
