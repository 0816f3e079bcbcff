"""Default class colours: familiar land-cover colours by name, else a distinct palette.

The colours by name and the palette were chosen together, so that a model's default colours
stay apart whichever classes it has (CIEDE2000 ΔE between any two of them ≥ 16.7; Kelly's 22
colours of maximum contrast reach 10.0, matplotlib's tab10 16.2 over 10 colours;
``tests/test_palette.py`` checks it). The palette was built farthest-point first in CIEDE2000
(glasbey-like) over the sRGB cube in steps of 15, lightness L* 30–90 and chroma C* ≥ 25 (no
near-black, near-white or grey, which read as nodata, background or cloud), starting from the
colours by name: each prefix of it is as distinct as that construction allows. Two synonyms
(``tree``, ``forest``) share a colour. Colours given explicitly are never replaced.
"""

from __future__ import annotations

__all__ = ["PALETTE", "default_color"]

_BY_NAME: dict[str, tuple[int, int, int]] = {
    "water": (31, 120, 180),
    "wetland": (106, 61, 154),
    "marsh": (106, 61, 154),
    "trees": (51, 160, 44),
    "tree": (51, 160, 44),
    "forest": (51, 160, 44),
    "shrub": (150, 150, 40),
    "grass": (190, 230, 120),
    "crops": (255, 215, 0),
    "crop": (255, 215, 0),
    "cropland": (255, 215, 0),
    "built": (227, 26, 28),
    "urban": (227, 26, 28),
    "bare": (180, 130, 80),
    "sand": (235, 215, 170),
    "snow": (245, 245, 245),
    "cloud": (165, 165, 165),
}

#: Colours of classes without a colour by name, by class index (repeats after 20).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 75, 255), (0, 90, 75), (90, 75, 0), (0, 225, 210), (255, 135, 150),
    (135, 30, 60), (165, 165, 255), (0, 195, 255), (60, 150, 150), (255, 210, 255),
    (165, 105, 135), (135, 60, 0), (45, 105, 0), (255, 165, 30), (120, 120, 165),
    (255, 120, 75), (15, 255, 165), (240, 0, 105), (150, 90, 255), (195, 15, 165),
)


def default_color(name: str, index: int) -> tuple[int, int, int]:
    """A colour for class ``name`` (the ``index``-th class) when the user gave none: its
    land-cover colour by name (case and surrounding spaces ignored), else ``PALETTE[index]``."""
    return _BY_NAME.get(name.strip().lower(), PALETTE[index % len(PALETTE)])
