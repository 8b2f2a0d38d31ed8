"""Smoke run of benchmarks/web_faults.py: its upload cases at a small size, no kills (those are minutes)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import web_faults  # noqa: E402


def test_web_faults_uploads_smoke(tmp_path, capsys):
    report = tmp_path / "report.json"
    assert web_faults.main(["--columns", "300", "--pdf-rows", "501", "--unused-mb", "2", "--kills", "0",
                            "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "csv_300_columns" in out and "-> 422" in out and "zip_501_pdf_rows" in out and "-> 413" in out
    assert "zip_2mb_unused_member" in out and "-> 201" in out
