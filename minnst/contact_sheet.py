"""Contact sheets: a grid of labelled thumbnails in one image, to see a batch at a glance.

    grid = [[Cell(None), Cell(style, "starry_night")],
            [Cell(photo, "tubingen"), Cell(result, "tubingen / starry_night")]]
    images.save_image("contact_sheet.jpg", contact_sheet(grid, thumb=160))

Each cell is a ``thumb × thumb`` box with its image fitted and centred in it, and its label
below (PIL's default font, which has ASCII glyphs only; each line cut to the box's width
with "..."). A cell without an
image (a failed run) is a grey box that keeps its label; ``Cell(None)`` with no label is
left blank (the corner above a first column of row headers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import images

MAX_SIDE = 16384   # the sheet's longest side, pixels: a bigger grid gets smaller thumbnails
MIN_THUMB = 32     # below this a thumbnail shows nothing: too many cells for one sheet
PAD = 8            # pixels between cells and around the sheet
BACKGROUND, EMPTY, TEXT = (255, 255, 255), (225, 225, 225), (40, 40, 40)


@dataclass(frozen=True)
class Cell:
    image: np.ndarray | None = None   # (H, W, 3) float in [0, 1] or uint8; None: no image
    label: str = ""                   # lines separated by "\n"


def label_line_height() -> int:
    """Pixels per line of a label."""
    return ImageFont.load_default().getbbox("Ay")[3] + 3


def fitted_thumb(n_rows: int, n_cols: int, thumb: int, label_height: int) -> int:
    """``thumb``, or the largest smaller size at which the sheet stays within ``MAX_SIDE``;
    ``ValueError`` when that is under ``MIN_THUMB``."""
    fit = min(thumb, (MAX_SIDE - PAD) // max(1, n_cols) - PAD,
              (MAX_SIDE - PAD) // max(1, n_rows) - PAD - label_height)
    if fit < MIN_THUMB:
        raise ValueError(f"{n_rows}×{n_cols} cells are too many for one contact sheet")
    return fit


def _cut(draw, text: str, font, width: int) -> str:
    """``text`` shortened with "..." until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _fit(img, thumb: int) -> Image.Image:
    """An image as a PIL RGB image whose longest side is at most ``thumb``."""
    a = np.asarray(img)
    if max(a.shape[:2]) > thumb:
        a = images.resize(a, size=thumb)
    return Image.fromarray(images.to_uint8(a), mode="RGB")


def contact_sheet(rows: list[list[Cell]], thumb: int = 160) -> np.ndarray:
    """The grid ``rows`` (rows of ``Cell``, all the same length) as one (H, W, 3) uint8
    image; ``thumb`` is shrunk if need be so that neither side exceeds ``MAX_SIDE``."""
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    if n_rows == 0 or n_cols == 0 or any(len(r) != n_cols for r in rows):
        raise ValueError("a contact sheet needs a non-empty grid with rows of equal length")
    font, line_h = ImageFont.load_default(), label_line_height()
    label_h = line_h * max(len(c.label.split("\n")) if c.label else 0 for r in rows for c in r)
    thumb = fitted_thumb(n_rows, n_cols, thumb, label_h)
    cell_w, cell_h = thumb + PAD, thumb + label_h + PAD
    sheet = Image.new("RGB", (PAD + n_cols * cell_w, PAD + n_rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            x, y = PAD + j * cell_w, PAD + i * cell_h
            if cell.image is not None:
                im = _fit(cell.image, thumb)
                sheet.paste(im, (x + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
            elif cell.label:
                draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], fill=EMPTY)
            for k, line in enumerate(cell.label.split("\n") if cell.label else []):
                draw.text((x, y + thumb + 2 + k * line_h), _cut(draw, line, font, thumb), fill=TEXT, font=font)
    return np.asarray(sheet)
