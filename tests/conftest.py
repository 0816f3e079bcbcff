"""Shared fixtures: real GeoTIFFs written to tmp dirs and tiny real smp bundles."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geoseg.models.bundle import BandSpec, ClassSpec, init_bundle

BANDS = ("B02", "B03", "B04", "B08")

#: A U-Net small enough for CI whose receptive field is bounded (radius 65 px, stride 8):
#: with a halo of 72 px its mask must not depend on tiling at all.
TINY_UNET = {"arch": "unet", "encoder": "resnet18",
             "arch_kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]}, "halo": 72}
TINY_DEEPLAB = {"arch": "deeplabv3plus", "encoder": "resnet18",
                "arch_kwargs": {"decoder_channels": 32}, "halo": 64}


def write_raster(path: Path, data: np.ndarray, transform=None, crs: str | None = "EPSG:32618",
                 nodata: float | None = 0, names: Sequence[str] | None = None,
                 block: int = 256) -> Path:
    """Write ``data`` ``(bands, H, W)`` as a tiled DEFLATE GeoTIFF (10 m UTM 18N by default)."""
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1],
                   count=data.shape[0], dtype=data.dtype.name,
                   transform=transform or from_origin(420000.0, 4150000.0, 10.0, 10.0),
                   tiled=True, blockxsize=block, blockysize=block, nodata=nodata,
                   compress="deflate")
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, n in enumerate(names or [], start=1):
            dst.set_band_description(i, n)
    return path


def coherent_field(height: int, width: int, seed: int, bands: int = 4) -> np.ndarray:
    """``(bands, H, W)`` float64 smooth spatial patterns plus noise (not white noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    out = []
    for _ in range(bands):
        fx, fy, px, py = rng.uniform(20, 90, 2).tolist() + rng.uniform(0, 6, 2).tolist()
        out.append(np.sin(x / fx + px) + np.cos(y / fy + py) + 0.1 * rng.normal(size=x.shape))
    return np.stack(out)


@pytest.fixture
def make_scene(tmp_path: Path) -> Callable[..., Path]:
    """Write a synthetic scene; returns its path."""

    def make(
        name: str = "scene.tif",
        height: int = 777,
        width: int = 1001,
        dtype: str = "uint16",
        names: Sequence[str] | None = BANDS,
        nodata: float | None = 0,
        crs: str | None = "EPSG:32618",
        seed: int = 0,
        nodata_box: tuple[int, int, int, int] | None = (0, 0, 60, 90),
        count: int | None = None,
    ) -> Path:
        count = count or (len(names) if names else 4)
        field = coherent_field(height, width, seed, count)
        base, amp, top = (120, 40, 254) if dtype == "uint8" else (1000, 400, 30000)
        data = (base + amp * field).clip(1, top).astype(dtype)
        if nodata_box is not None and nodata is not None:
            r0, c0, r1, c1 = nodata_box
            data[:, r0:r1, c0:c1] = nodata
        return write_raster(tmp_path / name, data, crs=crs, nodata=nodata, names=names)

    return make


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny random-init bundle; returns its path."""

    def make(spec: dict | None = None, name: str = "model.safetensors", n_classes: int = 5,
             tile_size: int = 256, dtype: str = "uint16", seed: int = 0) -> Path:
        spec = spec or TINY_UNET
        path = tmp_path / name
        init_bundle(
            path,
            arch=spec["arch"],
            encoder=spec["encoder"],
            arch_kwargs=spec["arch_kwargs"],
            bands=tuple(BandSpec(name=b, mean=1000.0, std=400.0) for b in BANDS),
            input_dtype=dtype,  # type: ignore[arg-type]
            classes=tuple(ClassSpec(id=i, name=f"class{i}", color=(50 * i, 200 - 30 * i, 90))
                          for i in range(n_classes)),
            tile_size=tile_size,
            halo=spec["halo"],
            seed=seed,
        )
        return path

    return make


# --- cluster tests (tests/test_cluster.py, tests/test_workflows.py) -------------------------------

REPO = Path(__file__).resolve().parents[1]

def cli_env(**extra: str) -> dict[str, str]:
    """Environment for geoseg/dask subprocesses: this checkout first on PYTHONPATH."""
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def geoseg_cli() -> list[str]:
    """argv prefix running this checkout's `geoseg` command."""
    import sys

    return [sys.executable, "-c", "from geoseg.cli import main; main()"]


def batch_mask(out: Path, scene: Path) -> Path:
    """Where a batch run over scenes writes ``scene``'s mask (`geoseg run`'s layout)."""
    return out / scene.stem / f"{scene.stem}.tif"


def batch_commands(scenes: Sequence[Path], bundle: Path, out: Path,
                   *options: str) -> list[list[str]]:
    """The `geoseg run` command line mapping ``scenes`` into ``out`` (one command)."""
    return [[*geoseg_cli(), "run", *map(str, scenes), "--model", str(bundle), "--out", str(out),
             *options]]


def gpkg_features(path: Path, layer: str = "landcover") -> list[tuple]:
    """A GeoPackage layer as sorted ``(class_id, area_m2, normalized WKB)`` rows, for comparing
    two runs' polygons regardless of feature order and ring start points."""
    import pyogrio
    import shapely

    df = pyogrio.read_dataframe(path, layer=layer)
    geoms = shapely.to_wkb(shapely.normalize(df.geometry.values))
    return sorted(zip(df.class_id, df.area_m2.round(6), geoms, strict=True))


def assert_same_mask(a: Path, b: Path) -> None:
    """Two mask COGs are the same file: pixels, CRS, transform, profile, tags, bytes."""
    with rasterio.open(a) as src_a, rasterio.open(b) as src_b:
        assert (src_a.crs, src_a.transform) == (src_b.crs, src_b.transform), a.name
        assert np.array_equal(src_a.read(), src_b.read()), a.name
        assert (src_a.profile, src_a.tags()) == (src_b.profile, src_b.tags()), a.name
    assert a.read_bytes() == b.read_bytes(), a.name  # same blocks → the very same COG


@pytest.fixture(scope="session")
def slurm() -> Iterator[dict[str, str]]:
    """A Slurm cluster to submit to: SLURM_CONF's, or a single-node one on loopback brought up
    by ``ci/slurm.sh up`` (as root) and stopped afterwards. Yields the environment for clients."""
    import os
    import shutil
    import subprocess

    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        pytest.skip("Slurm is not installed: `bash ci/slurm.sh install` (CI does)")
    state = Path(os.environ.get("GEOSEG_SLURM_DIR", "/tmp/geoseg-slurm"))
    env = cli_env()
    if "SLURM_CONF" in os.environ:  # a cluster someone else runs
        yield env
        return
    env["SLURM_CONF"] = str(state / "slurm.conf")
    pid = state / "run" / "slurmctld.pid"
    running = pid.exists() and Path(f"/proc/{pid.read_text().strip()}").exists()
    if not running and os.geteuid() != 0:
        pytest.skip("no Slurm cluster is up and only root can start one: "
                    "`sudo bash ci/slurm.sh up`")
    if not running:
        up = subprocess.run(["bash", str(REPO / "ci" / "slurm.sh"), "up"], capture_output=True,
                            text=True, timeout=120)
        if up.returncode:
            pytest.fail(f"ci/slurm.sh up failed:\n{up.stdout}\n{up.stderr}")
    try:
        yield env
    finally:
        if not running:
            subprocess.run(["bash", str(REPO / "ci" / "slurm.sh"), "down"], capture_output=True,
                           timeout=60)
