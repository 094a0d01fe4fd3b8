"""A small line chart written straight to PNG (zlib + struct): no plotting library needed.

Enough for one figure: axes with numbered ticks, step lines for the series, a dashed horizontal
reference line, a legend; text in a 3x5 pixel font scaled up. matplotlib would draw it nicer but
weighs tens of megabytes for one chart.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

Color = tuple[int, int, int]

# 3x5 glyphs, rows top to bottom, "#" set.
_FONT: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    ".": ("...", "...", "...", "...", ".#."),
    ",": ("...", "...", "...", ".#.", "#.."),
    "/": ("..#", "..#", ".#.", "#..", "#.."),
    "-": ("...", "...", "###", "...", "..."),
    ":": ("...", ".#.", "...", ".#.", "..."),
    "(": (".#.", "#..", "#..", "#..", ".#."),
    ")": (".#.", "..#", "..#", "..#", ".#."),
    " ": ("...", "...", "...", "...", "..."),
    "a": ("...", "##.", "..#", "###", "###"),
    "b": ("#..", "#..", "###", "#.#", "###"),
    "c": ("...", "###", "#..", "#..", "###"),
    "d": ("..#", "..#", "###", "#.#", "###"),
    "e": ("...", "###", "###", "#..", "###"),
    "f": (".##", "#..", "##.", "#..", "#.."),
    "g": ("...", "###", "#.#", "..#", "##."),
    "h": ("#..", "#..", "###", "#.#", "#.#"),
    "i": (".#.", "...", ".#.", ".#.", ".#."),
    "k": ("#..", "#.#", "##.", "#.#", "#.#"),
    "l": ("##.", ".#.", ".#.", ".#.", "###"),
    "m": ("...", "###", "###", "#.#", "#.#"),
    "n": ("...", "##.", "#.#", "#.#", "#.#"),
    "o": ("...", "###", "#.#", "#.#", "###"),
    "p": ("...", "###", "#.#", "###", "#.."),
    "q": ("...", "###", "#.#", "###", "..#"),
    "r": ("...", "###", "#..", "#..", "#.."),
    "s": ("...", ".##", ".#.", "..#", "##."),
    "t": (".#.", "###", ".#.", ".#.", ".##"),
    "u": ("...", "#.#", "#.#", "#.#", "###"),
    "v": ("...", "#.#", "#.#", "#.#", ".#."),
    "w": ("...", "#.#", "#.#", "###", "###"),
    "x": ("...", "#.#", ".#.", ".#.", "#.#"),
    "y": ("...", "#.#", "###", "..#", "##."),
    "z": ("...", "###", ".#.", "#..", "###"),
}


class Canvas:
    """An RGB raster with the few drawing operations a line chart needs."""

    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, color: Color) -> None:
        """Set one pixel (outside the canvas: ignored)."""
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i : i + 3] = bytes(color)

    def line(  # noqa: PLR0917 (two points and a color)
        self, x0: int, y0: int, x1: int, y1: int, color: Color, dash: int = 0
    ) -> None:
        """A straight line (Bresenham), optionally dashed every ``dash`` pixels."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err, n = dx + dy, 0
        while True:
            if not dash or (n // dash) % 2 == 0:
                self.dot(x0, y0, color)
            n += 1
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color, scale: int = 2) -> int:
        """Write ``text`` with its top-left corner at (x, y); returns the x after it."""
        for ch in text.lower():
            glyph = _FONT.get(ch, _FONT[" "])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        for a in range(scale):
                            for b in range(scale):
                                self.dot(x + col * scale + a, y + row * scale + b, color)
            x += 4 * scale
        return x

    def png(self) -> bytes:
        """The canvas as PNG bytes (8-bit RGB, no filter)."""
        stride = 3 * self.width
        raw = b"".join(
            b"\x00" + bytes(self.pixels[r * stride : (r + 1) * stride]) for r in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(1, ticks)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if m * magnitude >= raw:
            return m * magnitude
    return 10 * magnitude


def line_chart(
    path: Path,
    series: Sequence[tuple[str, Color, Sequence[tuple[float, float]]]],
    *,
    reference: tuple[str, float] | None = None,
    title: str = "",
    x_label: str = "",
    y_label: str = "",
    size: tuple[int, int] = (900, 420),
) -> None:
    """Draw ``series`` (label, color, points) as step lines, ``reference`` as a dashed red line."""
    width, height = size
    left, right, top, bottom = 70, 20, 70, 50
    canvas = Canvas(width, height)
    xs = [x for _, _, pts in series for x, _ in pts] or [0.0, 1.0]
    ys = [y for _, _, pts in series for _, y in pts] + ([reference[1]] if reference else [])
    x_min, x_max = min(xs), max(xs)
    y_max = max([*ys, 1.0]) * 1.15
    x_max = x_max if x_max > x_min else x_min + 1

    def px(x: float) -> int:
        return left + round((x - x_min) / (x_max - x_min) * (width - left - right))

    def py(y: float) -> int:
        return height - bottom - round(y / y_max * (height - top - bottom))

    grey, black = (200, 200, 200), (0, 0, 0)
    step = _nice_step(y_max, 6)
    tick = 0.0
    while tick <= y_max:
        canvas.line(left, py(tick), width - right, py(tick), grey)
        label = f"{tick:g}"
        canvas.text(left - 8 - 8 * len(label), py(tick) - 5, label, black)
        tick += step
    step = _nice_step(x_max - x_min, 10)
    tick = math.ceil(x_min / step) * step
    while tick <= x_max:
        canvas.line(px(tick), height - bottom, px(tick), height - bottom + 5, black)
        label = f"{tick:g}"
        canvas.text(px(tick) - 4 * len(label), height - bottom + 9, label, black)
        tick += step
    canvas.line(left, top, left, height - bottom, black)
    canvas.line(left, height - bottom, width - right, height - bottom, black)
    if reference is not None:
        canvas.line(left, py(reference[1]), width - right, py(reference[1]), (220, 0, 0), dash=6)
    for _, color, points in series:
        for (x0, y0), (x1, _) in itertools.pairwise(points):
            canvas.line(px(x0), py(y0), px(x1), py(y0), color)
        for (_, y0), (x1, y1) in itertools.pairwise(points):
            canvas.line(px(x1), py(y0), px(x1), py(y1), color)
    canvas.text(left, 10, title, black)
    canvas.text((width - 8 * len(x_label)) // 2, height - 20, x_label, black)
    canvas.text(8, top - 16, y_label, black)
    x = width - right - 10
    legend = [(label, color) for label, color, _ in series]
    if reference is not None:
        legend.append((reference[0], (220, 0, 0)))
    for label, color in reversed(legend):
        x -= 8 * len(label) + 30
        canvas.line(x, 37, x + 18, 37, color)
        canvas.line(x, 38, x + 18, 38, color)
        canvas.text(x + 22, 32, label, color)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(canvas.png())
