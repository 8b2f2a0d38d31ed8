"""Hostile uploads through the real app: a 4xx naming file/row/field, never a 500, nothing kept.

Image paths of an upload stay inside it, and the answer for a path outside is the same whether
the file there exists or not.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import struct
import zipfile
from pathlib import Path

import matplotlib
import pytest
from PIL import Image

ROW = {"text": "Le conseil municipal a vote le budget.", "summary": "Budget vote."}
DEEP = "[" * 100_000 + "]" * 100_000


def upload(client, filename: str, content: bytes):
    return client.post("/api/datasets", files={"file": (filename, content)})


def assert_refused(client, state_dir: Path, response, status: int, *words: str) -> str:
    """A 4xx with ``words`` in its message, no traceback, and no dataset (nor upload folder) left."""
    assert response.status_code == status, (response.status_code, response.text)
    message = response.json()["error"]
    for word in words:
        assert word in message, (word, message)
    assert "Traceback" not in response.text and str(state_dir) not in message
    assert [d["id"] for d in client.get("/api/datasets").json()["datasets"]] == ["sample"]
    assert list((state_dir / "datasets").iterdir()) == []
    return message


def jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def png_bytes(color: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def understate_size(archive: bytes, member: str) -> bytes:
    """The zip with ``member``'s uncompressed size halved in its local header and central directory."""
    data, name = bytearray(archive), member.encode()
    # (signature, offset of the uncompressed size, offset of the name) per the zip format
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = data.find(signature)
        while start != -1:
            if data[start + name_at : start + name_at + len(name)] == name:
                size = struct.unpack_from("<I", data, start + size_at)[0]
                struct.pack_into("<I", data, start + size_at, size // 2)
            start = data.find(signature, start + 4)
    return bytes(data)


@pytest.mark.parametrize(("filename", "content", "words"), [
    ("deep.jsonl", ('{"text": "a", "summary": ' + DEEP + "}\n").encode(), ("deep.jsonl", "line 1", "nested too deeply")),
    ("deep.json", DEEP.encode(), ("deep.json", "item 1", "nested too deeply")),
    ("long_path.jsonl", jsonl(ROW, {"image": "a" * 300 + ".png", "summary": "s"}),
     ("long_path.jsonl", "line 2", "column 'image'", "too long")),
    ("huge_line.jsonl", jsonl(ROW) + b'{"text": "' + b"mot " * (3 << 18) + b'", "summary": "s"}\n',
     ("huge_line.jsonl", "line 2", "longer than 1 MB")),
    ("huge_number.jsonl", b'{"text": "a", "summary": ' + b"9" * 5000 + b"}\n", ("line 1", "4,300 digits")),
    ("surrogate.jsonl", b'{"text": "\\udc00", "summary": "s"}\n', ("line 1", "column 'text'")),
    ("utf16.csv", "text,summary\nun,deux\n".encode("utf-16"), ("utf16.csv", "line 1", "UTF-8")),
    ("garbage.parquet", b"PAR1" + bytes(range(256)) * 8, ("garbage.parquet", "Parquet")),
    ("eval_only.jsonl", jsonl({**ROW, "split": "eval"}), ("eval_only.jsonl", "column 'split'", "'train'")),
])
def test_hostile_data_file_is_422_naming_file_row_and_field(client, state_dir, filename, content, words):
    assert_refused(client, state_dir, upload(client, filename, content), 422, *words)


def test_zip_whose_header_understates_a_member_is_400(client, state_dir):
    archive = zip_bytes({"set/data.jsonl": jsonl({"summary": "s", "image": "p.png"}), "set/p.png": png_bytes()})
    lying = understate_size(archive, "set/p.png")
    assert zipfile.ZipFile(io.BytesIO(lying)).getinfo("set/p.png").file_size < len(png_bytes())
    assert_refused(client, state_dir, upload(client, "scans.zip", lying), 400, "set/p.png", "damaged", "CRC")


@pytest.mark.parametrize(("members", "words"), [
    ({"d.jsonl": jsonl(ROW), "x" * 300 + ".png": png_bytes()}, ("255 bytes",)),
    # (only the files the rows name are extracted: both are named here)
    ({"d.jsonl": jsonl({"summary": "s", "image": "pages"}, {"summary": "s", "image": "pages/p.png"}),
      "pages": b"a file", "pages/p.png": png_bytes()}, ("pages/p.png", "could not be extracted")),
])
def test_zip_members_the_file_system_refuses_are_400(client, state_dir, members, words):
    assert_refused(client, state_dir, upload(client, "bundle.zip", zip_bytes(members)), 400, *words)


def test_a_corrupt_or_truncated_image_in_a_zip_is_422_naming_the_row(client, state_dir):
    data = jsonl({"summary": "a", "image": "ok.png"}, {"summary": "b", "image": "cut.png"})
    archive = zip_bytes({"d.jsonl": data, "ok.png": png_bytes(), "cut.png": png_bytes("red")[:60]})
    assert_refused(client, state_dir, upload(client, "scans.zip", archive), 422, "scans.zip: d.jsonl", "line 2",
                   "column 'image'", "cut.png")


def test_image_paths_outside_the_upload_are_refused_alike_whether_the_file_exists_or_not(client, state_dir):
    real_png = next((Path(matplotlib.get_data_path()) / "images").glob("*.png"))  # a real image on the server
    outside = {
        "/etc/passwd": True, "/etc/no-such-file": False, "/proc/self/environ": True,
        str(real_png): True, str(real_png.with_name("no-such.png")): False,
        "../../../../../../../../etc/passwd": True, "../../../../../../../../etc/no-such-file": False,
        "../state-neighbour.png": False,
    }
    answers = {}
    for path in outside:
        archive = zip_bytes({"d.jsonl": jsonl(ROW, {"summary": "s", "image": path}), "p.png": png_bytes()})
        message = assert_refused(client, state_dir, upload(client, "scans.zip", archive), 422,
                                 "scans.zip: d.jsonl", "line 2", "column 'image'", "outside the uploaded dataset")
        answers[path] = re.sub(r"image path '.*' points", "image path <path> points", message)
    assert len(set(answers.values())) == 1, answers  # the same words for existing and missing files
    # A plain data file (no zip) cannot name server files either.
    assert_refused(client, state_dir, upload(client, "d.jsonl", jsonl({"summary": "s", "image": str(real_png)})),
                   422, "line 1", "outside the uploaded dataset")


def test_image_paths_inside_the_upload_still_work(client, state_dir):
    data = jsonl({"summary": "a", "image": "../pages/p1.png"}, {"summary": "b", "image": "p2.png"})
    archive = zip_bytes({"set/data/d.jsonl": data, "set/pages/p1.png": png_bytes(), "set/data/p2.png": png_bytes("red")})
    response = upload(client, "scans.zip", archive)
    assert response.status_code == 201, response.text
    assert response.json()["rows"] == 2 and response.json()["train_rows"] == 2


def test_disk_full_while_extracting_is_507_and_keeps_nothing(client, state_dir, monkeypatch):
    from deepsynth.web import datasets_store

    class FullDisk:  # the extracted file's handle: a real file whose writes hit ENOSPC
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(datasets_store, "open", lambda path, mode="r": FullDisk(open(path, mode)), raising=False)
    archive = zip_bytes({"d.jsonl": jsonl(ROW)})
    assert_refused(client, state_dir, upload(client, "scans.zip", archive), 507, "disk is full")
