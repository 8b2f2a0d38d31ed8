"""A zip of PDFs and scans with a targets file, uploaded through the real app: kept, or one 4xx naming file and page."""

from __future__ import annotations

import io
import re
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdf_support import encrypted, pdf_bytes, png_bytes, write_pdf  # noqa: E402

REPORT = pdf_bytes(["Rapport, page 1", "Rapport, page 2", "Rapport, page 3"])


def zip_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(client, content: bytes):
    return client.post("/api/datasets", files={"file": ("scans.zip", content)})


def no_dataset_kept(client, state_dir: Path) -> bool:
    return ([d["id"] for d in client.get("/api/datasets").json()["datasets"]] == ["sample"]
            and list((state_dir / "datasets").iterdir()) == [])


def test_a_zip_of_pdfs_scans_and_a_targets_file_is_a_dataset_of_pages(client):
    targets = (b"file,page,summary,split\n"
               b"report.pdf,1,Le rapport commence.,train\n"
               b"report.pdf,3,Le rapport conclut.,eval\n"
               b"pages/scan.png,,Un scan.,train\n")
    archive = zip_of({"set/targets.csv": targets, "set/report.pdf": REPORT, "set/pages/scan.png": png_bytes()})
    response = upload(client, archive)
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["rows"] == 3 and info["splits"] == {"train": 2, "eval": 1} and info["train_rows"] == 2


@pytest.mark.parametrize(("members", "targets", "words"), [
    ({"locked.pdf": encrypted(REPORT)}, b"file,page,summary\nreport.pdf,1,Bon.\nlocked.pdf,1,Verrou.\n",
     ("row 3", "column 'file'", "locked.pdf", "page 1", "password-protected")),
    ({"cut.pdf": REPORT[: len(REPORT) // 2]}, b"image,summary\nreport.pdf#page=2,Bon.\ncut.pdf#page=2,Coupe.\n",
     ("row 3", "column 'image'", "cut.pdf", "page 2", "damaged or truncated")),
    ({}, b"file,page,summary\nreport.pdf,1,Bon.\nreport.pdf,4,Absente.\n",
     ("row 3", "report.pdf", "page 4", "no such page", "3 pages")),
    ({}, b"file,summary\nreport.pdf,Tout.\n", ("row 2", "report.pdf", "has 3 pages", "'page' column")),
])
def test_a_bad_pdf_in_a_zip_is_422_naming_row_file_and_page_and_nothing_is_kept(client, state_dir, members,
                                                                                 targets, words):
    archive = zip_of({"targets.csv": targets, "report.pdf": REPORT, **members})
    response = upload(client, archive)
    assert response.status_code == 422, response.text
    message = response.json()["error"]
    assert message.startswith("scans.zip: targets.csv, ")
    for word in words:
        assert word in message, (word, message)
    assert str(state_dir) not in message and "Traceback" not in response.text
    assert no_dataset_kept(client, state_dir)


def test_pdfs_outside_the_upload_are_refused_alike_whether_they_exist_or_not(client, state_dir, tmp_path):
    server_pdf = write_pdf(tmp_path / "server.pdf", ["Un fichier du serveur"])
    messages = []
    for reference in (str(server_pdf), f"{server_pdf}#page=1", "../../server.pdf#page=1", "/nowhere/absent.pdf"):
        archive = zip_of({"targets.csv": f"image,summary\n{reference},Vol.\n".encode(), "report.pdf": REPORT})
        response = upload(client, archive)
        assert response.status_code == 422, response.text
        # The quoted path is shortened past a length (a long temporary folder): compare without it.
        messages.append(re.sub(r"image path '[^']*'", "image path 'PATH'", response.json()["error"]))
        assert "outside the uploaded dataset" in messages[-1] and no_dataset_kept(client, state_dir)
    assert messages[0] == messages[3]  # an existing server file and a missing one get the same answer
