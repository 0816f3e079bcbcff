"""The grid of a scene delivered as band files: which band's grid the others are resampled onto,
and what the user should know about bands that only partly cover it or come from another CRS.

Pure metadata logic on :class:`~geoseg.scene.Scene` parts (one per band file), no pixel read;
:func:`~geoseg.scene.open_band_files` is its one caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geoseg.errors import SceneError
from geoseg.remote.uri import redact

if TYPE_CHECKING:
    from geoseg.scene import Scene

__all__ = ["coverage_warnings", "grid_part"]


def _pixel_area(transform: Sequence[float]) -> float:
    """A pixel's area in the transform's CRS units squared."""
    a, b, _, d, e, _ = transform[:6]
    return abs(a * e - b * d)


def _crs_groups(parts: dict[str, Scene]) -> list[list[str]]:
    """The bands grouped by CRS (equal CRSs, not just equal WKT), in order of appearance."""
    by_wkt: dict[str, list[str]] = {}
    for band, part in parts.items():
        by_wkt.setdefault(part.crs_wkt, []).append(band)
    if len(by_wkt) == 1:
        return list(by_wkt.values())
    from pyproj import CRS

    groups: list[tuple[Any, list[str]]] = []
    for wkt, bands in by_wkt.items():
        crs = CRS.from_wkt(wkt)
        same = next((g for c, g in groups if c == crs), None)
        if same is None:
            groups.append((crs, list(bands)))
        else:
            same.extend(bands)
    return [g for _, g in groups]


def _pixel_area_m2(part: Scene) -> float:
    """A pixel's area in m²: CRS linear units converted; for a geographic CRS, degrees at the
    grid's centre latitude on a sphere of the CRS's semi-major axis."""
    import math

    from pyproj import CRS

    crs = CRS.from_wkt(part.crs_wkt)
    factor = crs.axis_info[0].unit_conversion_factor or 1.0
    area = _pixel_area(part.transform) * factor * factor
    if crs.is_geographic:  # factor: degrees → radians
        a, b, c, d, e, f = part.transform[:6]
        lat = math.radians(d * part.width / 2 + e * part.height / 2 + f)
        radius = crs.ellipsoid.semi_major_metre if crs.ellipsoid else 6378137.0
        area *= radius * radius * abs(math.cos(lat))
    return area


def grid_part(parts: dict[str, Scene]) -> Scene:
    """The band file whose grid becomes the scene grid: the finest of the CRS group with the
    most bands; among equally large groups, a projected CRS (metres for areas and polygons)
    before a geographic one, then the group whose finest band is finest in m²."""
    groups = _crs_groups(parts)

    def finest(group: list[str]) -> Scene:
        return min((parts[b] for b in group), key=lambda p: _pixel_area(p.transform))

    if len(groups) > 1:
        from pyproj import CRS

        def rank(k: int) -> tuple[int, int, float, int]:
            best = finest(groups[k])
            projected = CRS.from_wkt(best.crs_wkt).is_projected
            return (-len(groups[k]), 0 if projected else 1, _pixel_area_m2(best), k)

        return finest(groups[min(range(len(groups)), key=rank)])
    return finest(groups[0])


def _crs_label(wkt: str) -> str:
    """``EPSG:n`` where the CRS has a code, else its name."""
    from pyproj import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def _pixel_box(part: Scene, grid: Scene) -> tuple[float, float, float, float]:
    """``part``'s footprint as ``(col0, row0, col1, row1)`` in ``grid``'s pixel coordinates
    (its bounding box, after reprojection when the CRSs differ)."""
    from rasterio.transform import Affine

    own = Affine(*part.transform[:6])
    xs, ys = zip(*(own * corner for corner in ((0, 0), (part.width, 0), (0, part.height),
                                                (part.width, part.height))), strict=True)
    box = (min(xs), min(ys), max(xs), max(ys))
    if part.crs_wkt != grid.crs_wkt:
        from rasterio.crs import CRS
        from rasterio.warp import transform_bounds

        try:
            box = transform_bounds(CRS.from_wkt(part.crs_wkt), CRS.from_wkt(grid.crs_wkt),
                                   *box, densify_pts=21)
        except Exception as exc:  # noqa: BLE001 - PROJ raises several kinds
            raise SceneError(f"{redact(part.bands[0].path)}: its footprint cannot be "
                             f"transformed from {_crs_label(part.crs_wkt)} to the scene's "
                             f"{_crs_label(grid.crs_wkt)} ({exc})") from exc
    inverse = ~Affine(*grid.transform[:6])
    cols, rows = zip(*(inverse * (x, y) for x in (box[0], box[2]) for y in (box[1], box[3])),
                     strict=True)
    return (min(cols), min(rows), max(cols), max(rows))


def coverage_warnings(name: str, parts: dict[str, Scene], grid: Scene) -> list[str]:
    """Warnings for bands in another CRS than ``grid`` and for bands that cover only part of
    it (more than one grid pixel missing on a side).

    Raises:
        SceneError: a band misses the grid entirely, or the bands share no pixel; each file,
            its CRS and its bounds are named.
    """
    import math

    warnings: list[str] = []
    common = (0.0, 0.0, float(grid.width), float(grid.height))
    origin = f"{redact(grid.bands[0].path)} ({_crs_label(grid.crs_wkt)})"
    for band, part in parts.items():
        path = redact(part.bands[0].path)
        if part.crs_wkt != grid.crs_wkt and _crs_label(part.crs_wkt) != _crs_label(
                grid.crs_wkt):
            warnings.append(f"band {band} ({path}) is in {_crs_label(part.crs_wkt)}, the scene "
                            f"grid in {_crs_label(grid.crs_wkt)}: it is reprojected on read")
        c0, r0, c1, r1 = _pixel_box(part, grid)
        if not all(map(math.isfinite, (c0, r0, c1, r1))):
            c0 = r0 = c1 = r1 = -1.0  # PROJ gave inf: nowhere near the grid
        common = (max(common[0], c0), max(common[1], r0), min(common[2], c1),
                  min(common[3], r1))
        cols = min(c1, grid.width) - max(c0, 0.0)
        rows = min(r1, grid.height) - max(r0, 0.0)
        if cols <= 0 or rows <= 0 or common[2] <= common[0] or common[3] <= common[1]:
            raise SceneError(
                f"{name}: band files do not overlap, so no pixel has every band: "
                + "; ".join(f"{b} {redact(p.bands[0].path)} ({_crs_label(p.crs_wkt)}, bounds "
                            f"{_bounds_text(p)})" for b, p in parts.items())
                + "; give band files of one area (check their CRS and georeferencing)")
        if c0 > 1 or r0 > 1 or c1 < grid.width - 1 or r1 < grid.height - 1:
            share = 100 * cols * rows / (grid.width * grid.height)
            warnings.append(f"band {band} ({path}) covers only {share:.0f} % of the scene grid "
                            f"(from {origin}): the mask is nodata where it has no pixels")
    return warnings


def _bounds_text(part: Scene) -> str:
    """``left, bottom, right, top`` of a north-up part, in its CRS units."""
    a, _, c, _, e, f = part.transform[:6]
    xs, ys = (c, c + a * part.width), (f, f + e * part.height)
    return ", ".join(f"{v:.10g}" for v in (min(xs), min(ys), max(xs), max(ys)))
