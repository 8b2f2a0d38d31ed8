"""Behaviour of `load_documents` / `load_sample_dataset` that users and the trainer rely on."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from PIL import Image

import deepsynth.data.loading as loading
from deepsynth.data import SAMPLE_DATA_PATH, DataError, load_documents, load_sample_dataset, render_document

ROWS = [
    {"text": "Le marché aura lieu samedi place de la Mairie.", "summary": "Marché samedi."},
    {"text": "La piscine ferme en août pour travaux.", "summary": "Piscine fermée en août."},
    {"text": "Réunion du club jeudi à 18 h, salle 2.", "summary": "Club jeudi 18 h."},
]


# -- helpers -----------------------------------------------------------------


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def png_bytes(color: tuple[int, ...], size: tuple[int, int] = (32, 20), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def same_image(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()


def files_under(path: Path) -> set[tuple[str, int]]:
    return {(str(p.relative_to(path)), p.stat().st_mtime_ns) for p in path.rglob("*")}


def error_of(source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_documents(source, **kwargs)
    return str(info.value)


# -- formats -----------------------------------------------------------------


def _sources(tmp_path: Path) -> dict[str, object]:
    ds = datasets.Dataset.from_list(ROWS)
    ds.to_parquet(str(tmp_path / "docs.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    (tmp_path / "array.json").write_text(json.dumps(ROWS, ensure_ascii=False), encoding="utf-8")
    return {
        "jsonl": write_jsonl(tmp_path / "docs.jsonl", ROWS),
        "json-lines": write_jsonl(tmp_path / "docs.json", ROWS),
        "json-array": tmp_path / "array.json",
        "csv": write_csv(tmp_path / "docs.csv", ROWS),
        "parquet": tmp_path / "docs.parquet",
        "save_to_disk": tmp_path / "saved",
        "save_to_disk-dict": str(tmp_path / "saved_dict"),
        "Dataset": ds,
    }


def test_every_format_loads_to_the_same_canonical_rows(tmp_path: Path) -> None:
    sources = _sources(tmp_path)
    before = files_under(tmp_path)
    expected_pages = [render_document(r["text"]) for r in ROWS]
    for name, source in sources.items():
        ds = load_documents(source)
        assert ds.column_names == ["text", "summary", "image"], name
        assert ds["text"] == [r["text"] for r in ROWS], name
        assert ds["summary"] == [r["summary"] for r in ROWS], name
        for row, page in zip(ds, expected_pages):
            assert isinstance(row["image"], Image.Image) and row["image"].mode == "RGB", name
            assert same_image(row["image"], page), name  # text-only rows get their rendered page
    # Loading wrote nothing next to the data (no cache files in the saved folders either).
    assert files_under(tmp_path) == before


def test_datasetdict_split_is_selected(tmp_path: Path) -> None:
    _sources(tmp_path)
    assert load_documents(tmp_path / "saved_dict", split="test")["text"] == [ROWS[0]["text"]]
    message = error_of(tmp_path / "saved_dict", split="validation")
    assert "saved_dict" in message and "'validation'" in message and "'train'" in message


def test_split_column_filters_rows_and_unknown_split_is_an_error(tmp_path: Path) -> None:
    rows = [dict(r, split=s) for r, s in zip(ROWS, ["train", "eval", "train"])]
    path = write_jsonl(tmp_path / "split.jsonl", rows)
    assert load_documents(path, split="eval")["text"] == [ROWS[1]["text"]]
    assert len(load_documents(path)) == 3  # no split asked: every row
    assert "'test'" in error_of(path, split="test")
    # Without a split column, a single file is the "train" split only.
    plain = write_jsonl(tmp_path / "plain.jsonl", ROWS)
    assert len(load_documents(plain, split="train")) == 3
    assert "no 'split' column" in error_of(plain, split="eval")


def test_column_mapping(tmp_path: Path) -> None:
    rows = [{"document": r["text"], "target": r["summary"], "summary": "wrong"} for r in ROWS]
    mapping = {"summary": "target", "text": "document"}
    ds = load_documents(write_csv(tmp_path / "mapped.csv", rows), column_mapping=mapping)
    assert ds["text"] == [r["text"] for r in ROWS]
    assert ds["summary"] == [r["summary"] for r in ROWS]
    with pytest.raises(DataError, match="not one of"):
        load_documents(tmp_path / "mapped.csv", column_mapping={"target": "summary"})


# -- images ------------------------------------------------------------------


def test_images_from_relative_path_bytes_dict_and_pil(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "red.png").write_bytes(png_bytes((255, 0, 0)))
    blue, green = png_bytes((0, 0, 255)), png_bytes((0, 255, 0))
    jsonl = write_jsonl(tmp_path / "with_images.jsonl", [{"text": "", "summary": "rouge", "image": "scans/red.png"}])
    from_path = load_documents(jsonl)[0]
    assert from_path["text"] == ""  # text may be empty when an image is given
    assert from_path["image"].size == (32, 20) and from_path["image"].getpixel((0, 0)) == (255, 0, 0)

    # base_dir overrides where relative paths are resolved.
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "scans").mkdir()
    (tmp_path / "elsewhere" / "scans" / "red.png").write_bytes(png_bytes((9, 9, 9)))
    assert load_documents(jsonl, base_dir=tmp_path / "elsewhere")[0]["image"].getpixel((0, 0)) == (9, 9, 9)

    raw_bytes = datasets.Dataset.from_dict({"text": ["a", "c"], "summary": ["x", "z"], "image": [blue, None]})
    loaded = load_documents(raw_bytes)
    assert loaded[0]["image"].getpixel((0, 0)) == (0, 0, 255)
    assert same_image(loaded[1]["image"], render_document("c"))  # null image -> rendered from text

    # {"bytes", "path"} dicts, as datasets stores images (plain struct column or Image feature).
    as_struct = datasets.Dataset.from_dict({"text": ["b"], "summary": ["y"], "image": [{"bytes": green, "path": None}]})
    assert load_documents(as_struct)[0]["image"].getpixel((0, 0)) == (0, 255, 0)
    as_feature = as_struct.cast_column("image", datasets.Image())
    assert load_documents(as_feature)[0]["image"].getpixel((0, 0)) == (0, 255, 0)

    pil = datasets.Dataset.from_dict(
        {"text": ["a"], "summary": ["x"], "image": [Image.new("L", (10, 10), 128)]},
        features=datasets.Features(
            {"text": datasets.Value("string"), "summary": datasets.Value("string"), "image": datasets.Image()}
        ),
    )
    pixel = load_documents(pil)[0]["image"]
    assert pixel.mode == "RGB" and pixel.getpixel((0, 0)) == (128, 128, 128)


def test_image_columns_survive_parquet_and_save_to_disk(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"text": [""], "summary": ["s"], "image": [png_bytes((1, 2, 3))]})
    ds = ds.cast_column("image", datasets.Image())
    ds.to_parquet(str(tmp_path / "img.parquet"))
    ds.save_to_disk(str(tmp_path / "img_dir"))
    for source in (tmp_path / "img.parquet", tmp_path / "img_dir", ds):
        assert load_documents(source)[0]["image"].getpixel((0, 0)) == (1, 2, 3)


def test_transparent_image_gets_a_white_background(tmp_path: Path) -> None:
    (tmp_path / "clear.png").write_bytes(png_bytes((0, 0, 0, 0), mode="RGBA"))
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "", "summary": "s", "image": "clear.png"}])
    assert load_documents(path)[0]["image"].getpixel((0, 0)) == (255, 255, 255)


# -- errors: every message names the file, the row and the column --------------


def test_missing_column_lists_the_columns_found(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "nosummary.csv", [{"text": r["text"], "resume": r["summary"]} for r in ROWS])
    message = error_of(csv)
    assert "nosummary.csv" in message and "row 1" in message and "'summary'" in message
    assert "'resume'" in message and "column_mapping" in message

    jsonl = write_jsonl(tmp_path / "nosummary.jsonl", [{"text": "t", "resume": "r"}])
    message = error_of(jsonl)
    assert "nosummary.jsonl" in message and "line 1" in message and "'summary'" in message and "'resume'" in message

    message = error_of(write_jsonl(tmp_path / "mapped.jsonl", ROWS), column_mapping={"text": "body"})
    assert "line 1" in message and "'body'" in message


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.csv", "blank.jsonl"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("\n\n" if name.startswith("blank") else "", encoding="utf-8")
    message = error_of(path)
    assert name in message and "no rows" in message


def test_header_only_csv_has_no_rows(tmp_path: Path) -> None:
    (tmp_path / "header.csv").write_text("text,summary\n", encoding="utf-8")
    assert "no rows" in error_of(tmp_path / "header.csv")


def test_missing_or_corrupt_image(tmp_path: Path) -> None:
    rows = [ROWS[0], {"text": "t", "summary": "s", "image": "scans/absent.png"}]
    message = error_of(write_jsonl(tmp_path / "imgs.jsonl", rows))
    assert "imgs.jsonl" in message and "line 2" in message and "'image'" in message and "absent.png" in message

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows = [ROWS[0], ROWS[1], {"text": "", "summary": "s", "image": "broken.png"}]
    message = error_of(write_csv(tmp_path / "imgs.csv", rows))
    assert "imgs.csv" in message and "row 4" in message and "'image'" in message and "broken.png" in message

    corrupt = datasets.Dataset.from_dict({"text": ["t"], "summary": ["s"], "image": [b"garbage"]})
    assert "row 1" in error_of(corrupt) and "'image'" in error_of(corrupt)


def test_empty_target(tmp_path: Path) -> None:
    rows = [ROWS[0], ROWS[1], {"text": "Un texte.", "summary": "   "}]
    message = error_of(write_jsonl(tmp_path / "target.jsonl", rows))
    assert "target.jsonl" in message and "line 3" in message and "'summary'" in message and "empty" in message
    message = error_of(write_csv(tmp_path / "target.csv", rows))
    assert "target.csv" in message and "row 4" in message and "'summary'" in message  # header is row 1


def test_empty_text_without_image(tmp_path: Path) -> None:
    message = error_of(write_jsonl(tmp_path / "notext.jsonl", [ROWS[0], {"text": "", "summary": "s"}]))
    assert "notext.jsonl" in message and "line 2" in message and "'text'" in message


def test_non_utf8_bytes(tmp_path: Path) -> None:
    good = json.dumps(ROWS[0], ensure_ascii=False).encode()
    bad = '{"text": "Caf\xe9 cr\xe8me", "summary": "s"}'.encode("latin-1")
    (tmp_path / "latin1.jsonl").write_bytes(good + b"\n" + bad + b"\n")
    message = error_of(tmp_path / "latin1.jsonl")
    assert "latin1.jsonl" in message and "line 2" in message and "'text'" in message and "UTF-8" in message

    (tmp_path / "latin1.csv").write_bytes("text,summary\nok,ok\nbon,r\xe9sum\xe9\n".encode("latin-1"))
    message = error_of(tmp_path / "latin1.csv")
    assert "latin1.csv" in message and "row 3" in message and "'summary'" in message and "0xE9" in message


def test_bad_json_line(tmp_path: Path) -> None:
    text = json.dumps(ROWS[0]) + "\n" + '{"text": "a", "summary": }\n' + json.dumps(ROWS[1]) + "\n"
    (tmp_path / "broken.jsonl").write_text(text, encoding="utf-8")
    message = error_of(tmp_path / "broken.jsonl")
    assert "broken.jsonl" in message and "line 2" in message and "character 26" in message

    (tmp_path / "list.jsonl").write_text('["not", "an", "object"]\n', encoding="utf-8")
    assert "line 1" in error_of(tmp_path / "list.jsonl")


def test_csv_row_with_extra_cells(tmp_path: Path) -> None:
    (tmp_path / "first.csv").write_text("text,summary\nUn, deux,trois\n", encoding="utf-8")
    message = error_of(tmp_path / "first.csv")
    assert "first.csv" in message and "row 2" in message and "double quotes" in message
    (tmp_path / "later.csv").write_text("text,summary\na,b\nUn, deux,trois\n", encoding="utf-8")
    message = error_of(tmp_path / "later.csv")
    assert "later.csv" in message and "line 3" in message


def test_wrong_value_type_is_reported(tmp_path: Path) -> None:
    message = error_of(write_jsonl(tmp_path / "types.jsonl", [{"text": "t", "summary": 42}]))
    assert "line 1" in message and "'summary'" in message and "int" in message


def test_missing_file_and_unsupported_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hub(*args, **kwargs):
        raise AssertionError("a path-like name must not be looked up on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    assert "file not found" in error_of(str(tmp_path / "absent.jsonl"))
    assert "file not found" in error_of("./data/absent.csv")
    (tmp_path / "docs.xlsx").write_bytes(b"x")
    assert "unsupported file type" in error_of(tmp_path / "docs.xlsx")


def test_hub_name_not_found_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(name, split=None):
        raise ConnectionError("Couldn't reach the Hugging Face Hub (offline mode is enabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = error_of("someone/french-letters")
    assert "someone/french-letters" in message and "could not be downloaded" in message


def test_hub_dataset_is_loaded_with_the_requested_split(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_hub(name, split=None):
        calls.append((name, split))
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)})

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert load_documents("someone/french-letters")["summary"] == [r["summary"] for r in ROWS]
    assert calls == [("someone/french-letters", None)]


# -- max_samples ---------------------------------------------------------------


def test_max_samples_keeps_the_first_rows_but_the_whole_file_is_validated(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "many.jsonl", ROWS)
    ds = load_documents(path, max_samples=2)
    assert ds["text"] == [ROWS[0]["text"], ROWS[1]["text"]]
    # A bad row past max_samples (or in another split) is still reported: every row of a file is checked.
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"text": "t", "summary": "", "split": "eval"}\n')
    for kwargs in ({"max_samples": 2}, {"max_samples": 2, "split": "train"}, {}):
        with pytest.raises(DataError, match="line 4, column 'summary'"):
            load_documents(path, **kwargs)
    with pytest.raises(ValueError):
        load_documents(path, max_samples=0)


def test_a_dataset_object_is_read_only_as_far_as_max_samples(tmp_path: Path) -> None:
    rows = datasets.Dataset.from_list(ROWS + [{"text": "t", "summary": ""}])
    assert load_documents(rows, max_samples=2)["text"] == [ROWS[0]["text"], ROWS[1]["text"]]


# -- bundled samples -------------------------------------------------------------


def _sample_records() -> list[dict]:
    with SAMPLE_DATA_PATH.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_sample_file_content() -> None:
    records = _sample_records()
    assert len(records) >= 60
    assert len({r["id"] for r in records}) == len(records)
    train = [r for r in records if r["split"] == "train"]
    evaluation = [r for r in records if r["split"] == "eval"]
    assert len(train) >= 40 and len(evaluation) >= 10
    assert len(train) + len(evaluation) == len(records)
    assert not {r["text"] for r in train} & {r["text"] for r in evaluation}
    for r in records:
        words, summary_words = len(r["text"].split()), len(r["summary"].split())
        assert 60 <= words <= 180, r["id"]
        assert summary_words < words / 2, r["id"]  # a summary, not a copy


def test_every_sample_document_fits_on_its_page() -> None:
    # The model must see the whole document to learn its summary: every word is drawn on the page.
    from deepsynth.data.render import visible_text

    for r in _sample_records():
        assert visible_text(r["text"]).split() == r["text"].split(), r["id"]


def test_load_sample_dataset_splits() -> None:
    train = load_sample_dataset("train")
    evaluation = load_sample_dataset("eval", max_samples=3)
    assert len(train) >= 40 and len(evaluation) == 3
    assert train.column_names == ["text", "summary", "image"]
    assert not set(train["text"]) & set(load_sample_dataset("eval")["text"])
    first = train[0]
    assert first["image"].mode == "RGB" and len(first["summary"]) < len(first["text"])
    # The CLI passes the path to load_documents: same rows.
    assert load_documents(SAMPLE_DATA_PATH, split="eval", max_samples=3)["text"] == evaluation["text"]
    with pytest.raises(ValueError):
        load_sample_dataset("test")


def test_features_are_the_declared_schema(tmp_path: Path) -> None:
    ds = load_documents(write_jsonl(tmp_path / "f.jsonl", ROWS))
    assert ds.features == loading.FEATURES
