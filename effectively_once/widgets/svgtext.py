"""How wide a label is drawn: the one estimate every widget's SVG layout and its tests use."""

from __future__ import annotations

# An upper bound on the width of one character of a sans-serif font, as a fraction of the font
# size (digits are 0.556 in Arial, and DejaVu Sans is wider, hence the margin).
CHAR_WIDTH = 0.64


def text_width(text: str, font_size: float, *, bold: bool = False) -> float:
    """A generous estimate of how wide ``text`` is drawn in a sans-serif font of ``font_size`` px."""
    return len(text) * CHAR_WIDTH * font_size * (1.1 if bold else 1.0)
