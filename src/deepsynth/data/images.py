"""Page images of data rows: read (confined to an upload when asked), bounded, decoded and normalised to RGB.

Every check runs before the costly step: a path's length before the file system
sees it, a file's size before it is read, an image's pixel count (from its header)
before it is decoded. Problems are raised as :class:`ImageProblem` with the text
of the message; the loader adds the file, row and column.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from pathlib import Path, PurePath
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

#: One image file, in bytes (an uncompressed 600-dpi A4 TIFF is about 105 MB).
MAX_IMAGE_BYTES = 128 << 20
#: One image, in pixels (a 600-dpi A4 scan has 35 million); checked before it is decoded.
MAX_IMAGE_PIXELS = 50_000_000
# File systems refuse longer names (ENAMETOOLONG): say so instead of failing inside stat().
_MAX_NAME_BYTES = 255
_MAX_PATH_BYTES = 4096
_READABLE = "expected PNG, JPEG, WebP, TIFF, BMP or GIF"
#: Image files that may hold several pages (a fax, a multi-page scan): read like PDFs, page by page.
TIFF_SUFFIXES = (".tif", ".tiff")
_TIFF_REFERENCE = re.compile(r"^(?P<path>.*\.tiff?)#page=(?P<page>[0-9]{1,9})$", re.IGNORECASE | re.DOTALL)


class ImageProblem(ValueError):
    """What is wrong with a row's image, as the message tells the user."""


class UnnamedPage(ImageProblem):
    """A file of several pages (a PDF, a multi-page TIFF) named without saying which page.

    ``count``: its pages; ``path``: the file as the caller named it (None when unknown). The message
    speaks of a data row's ``page`` column; a caller that took the file elsewhere rephrases it.
    """

    def __init__(self, message: str, count: int, path: str | None = None) -> None:
        super().__init__(message)
        self.count = count
        self.path = path


def megabytes(size: int) -> str:
    return f"{size / (1 << 20):.3g} MB"


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 80 else f"{text[:79]}…")


def tiff_reference(text: str) -> tuple[str, int | None] | None:
    """``("fax.tif", 2)`` for ``"fax.tif#page=2"``, ``("fax.tif", None)`` for ``"fax.tif"``; None when ``text``
    names no TIFF (the ``#page=N`` fragment of PDFs, for the files that may hold several pages)."""
    match = _TIFF_REFERENCE.match(text)
    if match is not None:
        return match.group("path"), int(match.group("page"))
    return (text, None) if text.lower().endswith(TIFF_SUFFIXES) else None


def image_page_count(data: bytes, described: str) -> int:
    """Pages of the image in ``data``: a TIFF's frames, 1 for any other image (an animation is not pages)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _pages_of(image)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageProblem(f"{described} is not an image Pillow can read ({_READABLE})") from None


def _pages_of(image: Image.Image) -> int:
    return int(getattr(image, "n_frames", 1)) if image.format == "TIFF" else 1


def _choose_page(image: Image.Image, page: int | None, described: str) -> None:
    """Move ``image`` to page ``page`` (1-based) of a multi-page TIFF; refuse a page it lacks, or none named
    when it has several (one row is one page with its own target, as for a PDF)."""
    count = _pages_of(image)
    if page is None:
        if count > 1:
            raise UnnamedPage(
                f"{described} has {count} pages and the row does not say which one; one row is one page with its "
                f"own target: give a 'page' column (1 to {count}) or write 'FILE.tif#page=N', one row per page "
                "(DeepSynth trains on one page image per sample)", count)
        return
    if not 1 <= page <= count:
        pages = "1 page" if count == 1 else f"{count} pages"
        raise ImageProblem(f"{described}, page {page}: no such page (the TIFF has {pages})")
    image.seek(page - 1)


def image_bytes(value: Any, *, base_dir: Path, image_root: Path | None = None, page: int | None = None) -> bytes | None:
    """Turn any accepted image value into encoded RGB-decodable bytes; None when the row has none.

    ``value`` is a path (relative ones resolve against ``base_dir``), bytes, a
    ``{"bytes", "path"}`` dict as `datasets` stores images, or a PIL image. With
    ``image_root``, a path must name a file inside that folder (see :func:`confined_path`).
    ``page``: the page of a multi-page TIFF (1-based); such a TIFF without it is refused.
    """
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return _pil_bytes(value)
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
        if not value:
            return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        data, described = bytes(value), "the image data"
        if not data:
            return None
    elif isinstance(value, (str, os.PathLike)):
        if not str(value).strip():
            return None
        data, described = read_file(os.fspath(value), base_dir, image_root)
    else:
        raise ImageProblem(f"expected an image path, image bytes or a PIL image, got {type(value).__name__}")
    try:
        return normalize_image(data, described, page)
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem(f"{described} is not an image Pillow can read ({_READABLE})") from None
    except Exception as exc:  # Pillow raises several types for bad data (truncated files: OSError)
        raise ImageProblem(f"{described} cannot be decoded as an image ({type(exc).__name__}: {exc})") from exc


def _pil_bytes(image: Image.Image) -> bytes:
    _check_pixels(image, "the image")
    try:
        image.load()
        return png_bytes(_to_rgb(image))
    except Exception as exc:
        raise ImageProblem(f"holds an image that cannot be decoded ({exc})") from exc


def read_file(text: str, base_dir: Path, image_root: Path | None, what: str = "image file") -> tuple[bytes, str]:
    """Read the image (or PDF: ``what``) file a row names: (its bytes, how messages name it)."""
    _check_path_text(text)
    if image_root is not None:
        path = confined_path(text, base_dir, image_root)
        described, where = f"{what} {_quoted(text)}", "in the uploaded dataset (paths are relative to the data file)"
    else:
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        described = f"{what} {str(path)!r}"
        where = f"(relative paths are resolved against {str(base_dir)!r})"
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ImageProblem(f"{described} is not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise ImageProblem(f"{described} is {megabytes(info.st_size)}; at most {megabytes(MAX_IMAGE_BYTES)} per file")
        data = _read_at_most(path, MAX_IMAGE_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        raise ImageProblem(f"{described} not found {where}") from None
    except OSError as exc:
        raise ImageProblem(f"{described} could not be read ({exc.strerror or exc})") from None
    if data is None:
        raise ImageProblem(f"{described} is larger than {megabytes(MAX_IMAGE_BYTES)}, the limit per file")
    return data, described


def _read_at_most(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None past ``limit`` (a file may grow after stat(), or lie about its size in /proc)."""
    chunks, total = [], 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):  # read(limit) would allocate the whole limit up front
            total += len(chunk)
            if total > limit:
                return None
            chunks.append(chunk)
    return b"".join(chunks)


def _check_path_text(text: str) -> None:
    """Refuse what no file system accepts, before any file system call sees it."""
    if "\x00" in text:
        raise ImageProblem(f"image path {_quoted(text)} holds a NUL character")
    try:
        encoded = os.fsencode(text)
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no file has that name
        raise ImageProblem(f"image path {_quoted(text)} is not valid text (half of a UTF-16 surrogate pair)") from None
    if len(encoded) > _MAX_PATH_BYTES or any(len(part) > _MAX_NAME_BYTES for part in encoded.split(b"/")):
        raise ImageProblem(f"image path {_quoted(text)} is too long ({len(encoded):,} bytes; file systems allow "
                           f"{_MAX_NAME_BYTES} bytes per file or folder name and {_MAX_PATH_BYTES:,} in all)")


def confined_path(text: str, base_dir: Path, image_root: Path) -> Path:
    """The file ``text`` names, which must lie inside ``image_root`` (an upload's folder).

    Absolute paths, ``..`` climbing out and symbolic links leading out are all refused with
    the same message, whether or not the file they name exists: the answer tells nothing
    about the server's files.
    """
    if text.startswith("~"):  # the trainer's command line would read it as a home folder
        raise ImageProblem(f"image path {_quoted(text)} starts with '~'; use a path relative to the data file")
    outside = ImageProblem(f"image path {_quoted(text)} points outside the uploaded dataset; use a path relative "
                           "to the data file that names an image inside the upload (zip the data file with its images)")
    if PurePath(text).is_absolute():
        raise outside
    try:
        root = image_root.resolve()
        # Lexically first (no file-system access for '../..'), then with symbolic links followed.
        lexical = Path(os.path.normpath(base_dir.resolve() / text))
        if not lexical.is_relative_to(root):
            raise outside
        resolved = lexical.resolve()
    except (OSError, RuntimeError):  # a symbolic-link loop
        raise outside from None
    if not resolved.is_relative_to(root):
        raise outside
    return resolved


def _check_pixels(image: Image.Image, described: str) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageProblem(
            f"{described} is {width:,}×{height:,} pixels ({width * height / 1e6:.0f} megapixels); at most "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels per image (a 600-dpi A4 scan has 35); scale it down"
        )


def normalize_image(data: bytes, described: str = "the image", page: int | None = None) -> bytes:
    """Decode fully (to catch truncated files now) and return bytes that decode to the right RGB page:
    page ``page`` of a multi-page TIFF (:func:`_choose_page`)."""
    with warnings.catch_warnings():
        # Pillow warns from 89 megapixels and refuses from 179; the stricter limit is checked below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageProblem(f"{described} has more than {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, the limit "
                               f"per image ({exc})") from None
    with image:
        _choose_page(image, page, described)
        _check_pixels(image, described)  # from the header, before the pixels are decoded
        image.load()
        upright = ImageOps.exif_transpose(image)  # phone photos of documents are often stored sideways
        rotated = upright is not image
        if image.mode == "RGB" and not rotated and image.format in ("PNG", "JPEG", "WEBP"):
            return data  # already what the model needs; keep the original compression
        return png_bytes(_to_rgb(upright))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # A plain convert("RGB") would turn transparent areas black, hiding black text.
        rgba = image.convert("RGBA")
        page = Image.new("RGB", rgba.size, "white")
        page.paste(rgba, mask=rgba.getchannel("A"))
        return page
    return image.convert("RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
