"""Default class colours: familiar land-cover colours by name, else a distinct palette."""

from __future__ import annotations

__all__ = ["default_color"]

_BY_NAME: dict[str, tuple[int, int, int]] = {
    "water": (31, 120, 180),
    "wetland": (106, 61, 154),
    "marsh": (106, 61, 154),
    "trees": (51, 160, 44),
    "tree": (51, 160, 44),
    "forest": (51, 160, 44),
    "shrub": (178, 223, 138),
    "grass": (190, 230, 120),
    "crops": (255, 215, 0),
    "cropland": (255, 215, 0),
    "built": (227, 26, 28),
    "urban": (227, 26, 28),
    "bare": (222, 184, 135),
    "sand": (240, 220, 160),
    "snow": (245, 245, 245),
    "cloud": (200, 200, 200),
}

_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)


def default_color(name: str, index: int) -> tuple[int, int, int]:
    """A colour for class ``name`` (the ``index``-th class) when the user gave none."""
    return _BY_NAME.get(name.strip().lower(), _PALETTE[index % len(_PALETTE)])
