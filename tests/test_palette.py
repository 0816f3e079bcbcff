"""Default class colours stay apart: CIEDE2000 between the defaults, checked here.

Threshold: ΔE00 ≥ 15 between any two default colours (the 20 palette colours and every colour
by name). ΔE00 ≈ 1 is a just-noticeable difference between adjacent patches; map classes must
be told apart across a legend, not side by side. Kelly's 22 colours of maximum contrast — the
classic set for this — reach 10.0 (yellow / greenish yellow), matplotlib's tab10 16.2 over only
10 colours; the old defaults gave "tree" #33a02c and "crop" #2ca02c, ΔE00 0.5.
"""

from __future__ import annotations

import itertools
import math

import pytest

from geoseg.models.palette import _BY_NAME, PALETTE, default_color

THRESHOLD = 15.0


def lab(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """sRGB (0-255) → CIELAB (D65)."""
    def linear(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(float(c)) for c in rgb)
    xyz = ((0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047,
           0.2126729 * r + 0.7151522 * g + 0.0721750 * b,
           (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883)
    fx, fy, fz = (t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29
                  for t in xyz)
    return 116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)


def ciede2000(lab1: tuple[float, float, float], lab2: tuple[float, float, float]) -> float:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005), kL = kC = kH = 1."""
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    cbar = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(cbar**7 / (cbar**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if c1p else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if c2p else 0.0
    dhp = 0.0
    if c1p * c2p:
        dhp = h2p - h1p
        dhp -= 360 if dhp > 180 else (-360 if dhp < -180 else 0)
    dlp, dcp = l2 - l1, c2p - c1p
    dhh = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dhp) / 2)
    lbp, cbp = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        hbp = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hbp = (h1p + h2p) / 2
    else:
        hbp = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(hbp - 30)) + 0.24 * math.cos(math.radians(2 * hbp))
         + 0.32 * math.cos(math.radians(3 * hbp + 6)) - 0.20 * math.cos(math.radians(4 * hbp - 63)))
    rc = 2 * math.sqrt(cbp**7 / (cbp**7 + 25**7))
    rt = -math.sin(math.radians(60 * math.exp(-(((hbp - 275) / 25) ** 2)))) * rc
    sl = 1 + 0.015 * (lbp - 50) ** 2 / math.sqrt(20 + (lbp - 50) ** 2)
    sc, sh = 1 + 0.045 * cbp, 1 + 0.015 * cbp * t
    return math.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dhh / sh) ** 2
                     + rt * (dcp / sc) * (dhh / sh))


def delta_e(c1: tuple[int, int, int], c2: tuple[int, int, int]) -> float:
    return ciede2000(lab(c1), lab(c2))


@pytest.mark.parametrize(("lab1", "lab2", "expected"), [  # Sharma et al.'s test data, pairs 1-34
    ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
    ((50, -1.3802, -84.2814), (50, 0, -82.7485), 1.0000),
    ((50, 0, 0), (50, -1, 2), 2.3669),
    ((50, 2.49, -0.001), (50, -2.49, 0.0011), 7.2195),
    ((50, 2.5, 0), (73, 25, -18), 27.1492),
    ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ((22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    ((2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
])
def test_ciede2000_matches_the_reference_data(lab1, lab2, expected) -> None:
    assert ciede2000(lab1, lab2) == pytest.approx(expected, abs=1e-4)


def test_the_first_20_defaults_stay_apart() -> None:
    assert len(PALETTE) == 20 and len(set(PALETTE)) == 20
    worst = min(itertools.combinations(PALETTE, 2), key=lambda p: delta_e(*p))
    assert delta_e(*worst) >= THRESHOLD, worst


def test_colours_by_name_stay_apart_from_each_other_and_the_palette() -> None:
    colours = sorted(set(_BY_NAME.values()) | set(PALETTE))  # synonyms share a colour
    worst = min(itertools.combinations(colours, 2), key=lambda p: delta_e(*p))
    assert delta_e(*worst) >= THRESHOLD, worst


def test_tree_and_crop_are_no_longer_the_same_green() -> None:
    names = ["water", "tree", "crop", "built", "road", "rail", "field"]
    colours = [default_color(n, i) for i, n in enumerate(names)]
    assert min(delta_e(a, b) for a, b in itertools.combinations(colours, 2)) >= THRESHOLD
    assert default_color(" Trees ", 0) == default_color("forest", 5)  # by name, any index
    assert default_color("x", 3) == default_color("y", 23) == PALETTE[3]
