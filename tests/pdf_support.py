"""Real PDFs for the tests: written by matplotlib's PDF backend, encrypted by pypdf, cut short by hand."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backends.backend_pdf import PdfPages  # noqa: E402
from PIL import Image  # noqa: E402

A4_INCHES = (8.27, 11.69)  # 595 × 842 points
# One colour per page, so a test can tell which page it got from its pixels.
PAGE_COLOURS = ((1.0, 0.0, 0.0), (0.0, 0.6, 0.0), (0.0, 0.0, 1.0), (0.5, 0.5, 0.0))


def pdf_bytes(texts: list[str], inches: tuple[float, float] = A4_INCHES) -> bytes:
    """A PDF with one page per text: page k has PAGE_COLOURS[k] as its background and the text on it."""
    buffer = io.BytesIO()
    with PdfPages(buffer) as pages:
        for number, text in enumerate(texts):
            figure = plt.figure(figsize=inches, facecolor=PAGE_COLOURS[number % len(PAGE_COLOURS)])
            figure.text(0.1, 0.8, text, fontsize=18, color="white")
            pages.savefig(figure, facecolor=figure.get_facecolor())
            plt.close(figure)
    return buffer.getvalue()


def write_pdf(path: Path, texts: list[str], inches: tuple[float, float] = A4_INCHES) -> Path:
    path.write_bytes(pdf_bytes(texts, inches))
    return path


def encrypted(data: bytes, user_password: str = "secret", owner_password: str = "owner") -> bytes:
    """``data`` encrypted with the standard security handler (RC4-128: pypdf needs no crypto library for it)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def png_bytes(size: tuple[int, int] = (300, 400), colour: str = "white") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def centre_colour(image: Image.Image) -> tuple[int, int, int]:
    """The colour near the page's lower middle (below the text)."""
    return image.convert("RGB").getpixel((image.width // 2, int(image.height * 0.6)))
