"""Uploaded datasets of the web app: validated with :func:`deepsynth.data.check_documents`, one folder each.

Layout: ``<state_dir>/datasets/<id>/`` holds ``meta.json`` and the uploaded data file (or the
extracted zip: one data file plus the images and PDFs it names, resolved relative to the data file
as :func:`load_documents` does: a zip of PDFs and scans with a targets file beside them is a folder
dataset, :mod:`deepsynth.data.folders`). The bundled French samples are offered as the read-only
dataset ``sample``.

Everything a client names is checked before it touches the disk: display names and file names may
not contain path separators or ``..``; zip members may not be absolute, climb out with ``..``, be
links, have names the file system refuses, hold more than their header declares, or add up to more
than the extraction limit; the rows' image paths must name files inside the upload (the answer for
a path outside is the same whether or not a file exists there; PDFs are confined alike, and a
damaged, truncated or password-protected PDF or a missing page is refused naming the file, the page
and the row). Every refusal is a 4xx naming the
file, row and field; the upload folder is removed whatever happens.
"""

from __future__ import annotations

import errno
import json
import posixpath
import re
import shutil
import stat
import threading
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from deepsynth.data import SAMPLE_DATA_PATH, DataError, check_documents
from deepsynth.data.loading import referenced_files
from deepsynth.web.settings import DEFAULT_MAX_UPLOAD_BYTES, MAX_UPLOAD_PDF_PAGES

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
UPLOAD_SUFFIXES = (*DATA_SUFFIXES, ".zip")
MAX_ZIP_MEMBERS = 5_000
SAMPLE_ID = "sample"
SAMPLE_NAME = "Bundled French samples"
_SAMPLE_INFO: "DatasetInfo | None" = None
_SAMPLE_LOCK = threading.Lock()
_ID_FORM = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DatasetRequestError(ValueError):
    """A client request the store refuses before reading data (bad name, traversal, size): HTTP 400/413."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


class DatasetNotFound(KeyError):
    """No dataset with that id."""

    status_code = 404

    def __str__(self) -> str:  # KeyError quotes its argument
        return str(self.args[0]) if self.args else "dataset not found"


@dataclass
class DatasetInfo:
    """What the API lists about one dataset."""

    id: str
    name: str
    filename: str
    rows: int
    created: float
    data_file: str  # relative to the dataset folder (absolute for the bundled sample)
    splits: dict[str, int] = field(default_factory=dict)  # rows per value of a 'split' column, if any
    train_rows: int = 0  # rows the trainer trains on: the 'train' split when there is one, else all
    size_bytes: int = 0
    builtin: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("data_file")
        return data


def human_size(size: int | float) -> str:
    """``52428800`` → ``"50 MB"``; small limits in KB."""
    if size >= 2**20:
        return f"{size / 2**20:.3g} MB"
    return f"{size / 1024:.3g} KB"


def check_name(value: str, what: str = "name") -> str:
    """Return ``value`` stripped if it is a plain name (no separators, no ``..``), else raise 400."""
    if not isinstance(value, str) or not value.strip():
        raise DatasetRequestError(f"{what}: expected a non-empty name")
    value = value.strip()
    if len(value) > 200:
        raise DatasetRequestError(f"{what}: at most 200 characters, got {len(value)}")
    if "/" in value or "\\" in value or value in (".", "..") or _CONTROL.search(value):
        raise DatasetRequestError(f"{what}: {value!r} is not a plain name (no path separators, '..' or control characters)")
    return value


def check_id(dataset_id: str) -> str:
    if not isinstance(dataset_id, str) or not _ID_FORM.match(dataset_id):
        raise DatasetRequestError(f"dataset_id: {dataset_id!r} is not a dataset id (lower-case letters, digits, - and _)")
    return dataset_id


def _slug(name: str) -> str:
    stem = name.rsplit(".", 1)[0] if "." in name else name
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:40].strip("-")
    return slug or "dataset"


class DatasetStore:
    """Datasets under ``<state_dir>/datasets``; safe to use from several threads."""

    def __init__(self, state_dir: Path, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_extracted_bytes: int | None = None, max_pdf_pages: int = MAX_UPLOAD_PDF_PAGES) -> None:
        self.root = Path(state_dir) / "datasets"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_extracted_bytes = int(max_extracted_bytes or 4 * self.max_upload_bytes)
        self.max_pdf_pages = int(max_pdf_pages)
        self._lock = threading.Lock()

    # --- reading -----------------------------------------------------------------------------

    def sample(self) -> DatasetInfo:
        """The bundled French samples (validated and counted once per process)."""
        global _SAMPLE_INFO
        with _SAMPLE_LOCK:
            if _SAMPLE_INFO is None:
                rows, splits, train_rows = _count(SAMPLE_DATA_PATH)
                _SAMPLE_INFO = DatasetInfo(
                    id=SAMPLE_ID, name=SAMPLE_NAME, filename=SAMPLE_DATA_PATH.name, rows=rows,
                    created=0.0, data_file=str(SAMPLE_DATA_PATH), splits=splits, train_rows=train_rows,
                    size_bytes=SAMPLE_DATA_PATH.stat().st_size, builtin=True,
                )
            return DatasetInfo(**asdict(_SAMPLE_INFO))

    def list(self) -> list[DatasetInfo]:
        found = []
        for meta in sorted(self.root.glob("*/meta.json")):
            try:
                found.append(DatasetInfo(**json.loads(meta.read_text(encoding="utf-8"))))
            except (OSError, ValueError, TypeError):
                continue  # a half-written or foreign folder is not a dataset
        found.sort(key=lambda info: info.created, reverse=True)
        return [self.sample(), *found]

    def get(self, dataset_id: str) -> DatasetInfo:
        check_id(dataset_id)
        if dataset_id == SAMPLE_ID:
            return self.sample()
        meta = self.root / dataset_id / "meta.json"
        if not meta.is_file():
            raise DatasetNotFound(f"dataset_id: no dataset {dataset_id!r}")
        return DatasetInfo(**json.loads(meta.read_text(encoding="utf-8")))

    def name_of(self, dataset_id: str) -> str | None:
        """Display name of a dataset (None if it is gone), without counting the sample."""
        if dataset_id == SAMPLE_ID:
            return SAMPLE_NAME
        try:
            return self.get(dataset_id).name
        except (DatasetNotFound, DatasetRequestError, OSError, ValueError, TypeError):
            return None

    def data_path(self, dataset_id: str) -> Path:
        """Absolute path of the dataset's data file (what ``deepsynth train --data`` gets)."""
        if dataset_id == SAMPLE_ID:
            return SAMPLE_DATA_PATH
        info = self.get(dataset_id)
        return Path(info.data_file) if info.builtin else self.root / info.id / info.data_file

    # --- writing -----------------------------------------------------------------------------

    def new_upload_dir(self) -> Path:
        """A private folder for an upload in progress (renamed into place once validated)."""
        path = self.root / f".upload-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def add(self, upload_dir: Path, filename: str, name: str | None = None) -> DatasetInfo:
        """Validate the file ``upload_dir/upload`` uploaded as ``filename``; keep it as a new dataset.

        Raises DatasetRequestError (bad names, zip members) or DataError (the data itself); the
        upload folder is removed in every case.
        """
        try:
            filename = check_name(filename, "filename")
            if len(filename.encode("utf-8", "surrogateescape")) > 255:
                raise DatasetRequestError("filename: longer than 255 bytes, which file systems refuse")
            display = check_name(name, "name") if name not in (None, "") else filename
            suffix = PurePosixPath(filename.lower()).suffix
            if suffix not in UPLOAD_SUFFIXES:
                raise DatasetRequestError(
                    f"filename: {filename!r} has an unsupported type; expected one of {', '.join(UPLOAD_SUFFIXES)}"
                )
            raw = upload_dir / "upload"
            size = raw.stat().st_size
            content = upload_dir / "content"
            content.mkdir()
            if suffix == ".zip":
                data_rel = self._extract_zip(raw, content, filename)
            else:
                data_rel = filename
                raw.rename(content / filename)
            data_file = content / data_rel
            # Messages name the file as the user knows it, never our folder; image paths must stay in the upload.
            try:
                rows, splits, train_rows = _count(data_file, image_root=content)
            except DataError as error:
                raise _relabelled(error, content, filename if suffix != ".zip" else f"{filename}: {data_rel}") from None
            with self._lock:
                dataset_id = f"{_slug(display)}-{uuid.uuid4().hex[:8]}"
                final = self.root / dataset_id
                info = DatasetInfo(
                    id=dataset_id, name=display, filename=filename, rows=rows, created=time.time(),
                    data_file=data_rel, splits=splits, train_rows=train_rows, size_bytes=size,
                )
                (content / "meta.json").write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")
                content.rename(final)
            return info
        finally:
            shutil.rmtree(upload_dir, ignore_errors=True)

    def delete(self, dataset_id: str) -> DatasetInfo:
        info = self.get(dataset_id)
        if info.builtin:
            raise DatasetRequestError(f"dataset_id: {dataset_id!r} is the bundled sample set and cannot be deleted",
                                      status_code=409)
        with self._lock:
            folder = self.root / info.id
            trash = self.root / f".deleted-{uuid.uuid4().hex}"
            folder.rename(trash)  # atomic: the dataset disappears at once
            shutil.rmtree(trash, ignore_errors=True)
        return info

    def _extract_zip(self, archive: Path, dest: Path, filename: str) -> str:
        """Extract the data file and the files its rows name (nothing else) into ``dest``; return the data
        file's path relative to it. The rows may name at most ``max_pdf_pages`` PDF pages (each is rendered
        when they are validated), and what is extracted may add up to ``max_extracted_bytes``."""
        try:
            zf = zipfile.ZipFile(archive)
        except Exception as error:  # BadZipFile, and what a forged directory makes zipfile raise
            raise DatasetRequestError(f"file: {filename!r} is not a valid zip archive ({_reason(error)})") from None
        with zf:
            plan, data_files = self._plan_zip(zf.infolist())
            if not data_files:
                raise DataError(
                    f"the zip holds no data file; expected one of {', '.join(DATA_SUFFIXES)} (the targets file) next "
                    "to the images or PDFs",
                    source=filename,
                )
            if len(data_files) > 1:
                raise DataError(
                    f"the zip holds several data files ({', '.join(sorted(data_files))}); keep exactly one",
                    source=filename,
                )
            data_rel = data_files[0]
            members = {path.as_posix(): (member, path) for member, path in plan}
            self._extract(zf, dest, [members[data_rel]])
            named = self._named_members(dest, data_rel, filename)
            self._extract(zf, dest, [members[name] for name in sorted(named & members.keys())],
                          already=members[data_rel][0].file_size)
            return data_rel

    def _named_members(self, dest: Path, data_rel: str, filename: str) -> set[str]:
        """Archive paths of the files the data file's rows name; refuses more PDF pages than the limit."""
        try:
            references = referenced_files(dest / data_rel)
        except DataError as error:
            raise _relabelled(error, dest, f"{filename}: {data_rel}") from None
        if references.pdf_pages > self.max_pdf_pages:
            raise DatasetRequestError(
                f"file: the rows of {data_rel!r} name {references.pdf_pages:,} PDF pages; at most "
                f"{self.max_pdf_pages:,} per upload (each page is rendered to check it): split the documents "
                "into several uploads", status_code=413)
        folder = PurePosixPath(data_rel).parent
        named = set()
        for text in references.paths:
            path = posixpath.normpath((folder / text.replace("\\", "/")).as_posix())
            if not path.startswith(("../", "/")) and path != "..":
                named.add(path)  # a path outside the archive is refused by the validation, by name
        return named

    def _extract(self, zf: zipfile.ZipFile, dest: Path, members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
                 already: int = 0) -> None:
        """Extract ``members`` (their declared sizes, plus ``already``, within the limit) under ``dest``."""
        total = already + sum(member.file_size for member, _ in members)
        if total > self.max_extracted_bytes:
            raise DatasetRequestError(
                f"file: the zip expands to more than {human_size(self.max_extracted_bytes)} (the data file and the files "
                "its rows name)",
                status_code=413)
        root = dest.resolve()
        for member, path in members:
            target = (dest / Path(*path.parts)).resolve()
            if root not in target.parents:
                raise DatasetRequestError(f"file: zip member {member.filename!r} points outside the archive; refused")
            _extract_member(zf, member, target)

    def _plan_zip(self, members: list[zipfile.ZipInfo]) -> tuple[list[tuple[zipfile.ZipInfo, PurePosixPath]], list[str]]:
        """Check every member's name, type and declared size; return (files to extract, data files)."""
        if len(members) > MAX_ZIP_MEMBERS:
            raise DatasetRequestError(f"file: the zip holds {len(members)} entries; at most {MAX_ZIP_MEMBERS}")
        data_files: list[str] = []
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        for member in members:
            name = member.filename
            path = PurePosixPath(name)
            if ("\\" in name or name.startswith("/") or path.is_absolute() or ".." in path.parts
                    or re.match(r"^[A-Za-z]:", name) or _CONTROL.search(name)):
                raise DatasetRequestError(f"file: zip member {name!r} points outside the archive; refused")
            if any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in path.parts):
                raise DatasetRequestError(f"file: zip member {name[:80]!r}… has a file or folder name longer than "
                                          "255 bytes, which file systems refuse")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise DatasetRequestError(f"file: zip member {name!r} is a symbolic link; refused")
            if member.flag_bits & 0x1:
                raise DatasetRequestError(f"file: zip member {name!r} is encrypted")
            if member.is_dir() or path.parts[0] == "__MACOSX" or path.name.startswith("."):
                continue  # folders are made as needed; Finder's resource forks and hidden files are skipped
            plan.append((member, path))  # extracted only if it is the data file or a file the data names
            if path.suffix.lower() in DATA_SUFFIXES:
                data_files.append(path.as_posix())
        return plan, data_files


def _extract_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    """Write one member, never more than its header declares; a damaged member is the client's 400."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with zf.open(member) as source, open(target, "wb") as out:
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if written > member.file_size:  # a lying header: stop at what it announced
                    raise DatasetRequestError(f"file: zip member {member.filename!r} is larger than declared")
                out.write(chunk)
    except DatasetRequestError:
        raise
    except zipfile.BadZipFile as error:  # e.g. "Bad CRC-32": the header understates the member's size
        raise DatasetRequestError(f"file: zip member {member.filename!r} is damaged ({_reason(error)})") from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DatasetRequestError("file: the server's disk is full; the upload was not kept", 507) from None
        # A file and a folder of the same name, for instance.
        raise DatasetRequestError(f"file: zip member {member.filename!r} could not be extracted "
                                  f"({_reason(error)})") from None
    except Exception as error:  # zlib.error, EOFError, NotImplementedError (compression), lzma errors...
        raise DatasetRequestError(f"file: zip member {member.filename!r} is damaged or uses an unsupported "
                                  f"format ({_reason(error)})") from None


def _relabelled(error: DataError, content: Path, source: str) -> DataError:
    """``error`` naming the file as the user knows it, never the server's upload folder."""
    return DataError(error.problem.replace(f"{content.resolve()}/", "").replace(f"{content}/", ""),
                     source=source, location=error.location, row=error.row, column=error.column)


def _reason(error: BaseException) -> str:
    """An exception's message without file-system paths of the server."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _count(data_file: Path, image_root: Path | None = None) -> tuple[int, dict[str, int], int]:
    """Validate every row (images confined to ``image_root``); return (rows, rows per split, training rows)."""
    counts = check_documents(data_file, image_root=image_root)
    return counts.rows, counts.splits, counts.train_rows
