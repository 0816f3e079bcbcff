"""Open geoseg outputs in real, headless QGIS (Debian's PyQGIS under /usr/bin/python3).

Skipped when PyQGIS is not installed; ``ci/install-qgis.sh`` installs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_maskfile import CLASSES as HOSTILE_CLASSES  # noqa: E402
from test_maskfile import expected_name, write_cog  # noqa: E402
from test_vectorize import CLASSES, coherent_mask, n_components, write_mask  # noqa: E402

from geoseg.vectorize import vectorize_mask  # noqa: E402

QGIS_PY = "/usr/bin/python3"


def _has_qgis() -> bool:
    try:
        return subprocess.run([QGIS_PY, "-c", "import qgis.core"], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(
    not _has_qgis(), reason=f"PyQGIS not importable by {QGIS_PY}; run ci/install-qgis.sh")

SCRIPT = r"""
import json, sys
from qgis.core import QgsApplication, QgsVectorLayer, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
gpkg, mask = sys.argv[1], sys.argv[2]
out = {}
vl = QgsVectorLayer(gpkg + "|layername=landcover", "landcover", "ogr")
out["valid"] = vl.isValid()
out["crs"] = vl.crs().authid()
out["count"] = vl.featureCount()
r = vl.renderer()
out["renderer"] = r.type()
out["attr"] = getattr(r, "classAttribute", lambda: None)()
out["categories"] = {str(c.value()): [c.label(), c.symbol().color().name()]
                     for c in getattr(r, "categories", lambda: [])()}
out["class_ids"] = sorted({int(f["class_id"]) for f in vl.getFeatures()})
rl = QgsRasterLayer(mask, "mask")
out["raster_valid"] = rl.isValid()
out["raster_renderer"] = rl.renderer().type()
del vl, rl, r
app.exitQgis()
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("qgis")
    mask = write_mask(d / "mask.tif", coherent_mask())
    result = vectorize_mask(mask, d / "landcover.gpkg", block_size=300, min_area_m2=2000.0)
    return mask, result


def test_qgis_opens_the_layer_styled_and_the_mask_paletted(outputs):
    mask, result = outputs
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR="/tmp")
    proc = subprocess.run([QGIS_PY, "-c", SCRIPT, str(result.path), str(mask)], env=env,
                          capture_output=True, text=True, timeout=180)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, f"QGIS failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    got = json.loads(line[0][len("RESULT"):])
    assert got["valid"] and got["crs"] == "EPSG:32633"
    assert got["count"] == result.n_features
    assert got["renderer"] == "categorizedSymbol" and got["attr"] == "class_id"
    by_id = {c["id"]: c for c in CLASSES}
    for cid in got["class_ids"]:
        label, colour = got["categories"][str(cid)]
        r, g, b = by_id[cid]["color"]
        assert label == by_id[cid]["name"] and colour == f"#{r:02x}{g:02x}{b:02x}"
    assert got["raster_valid"] and got["raster_renderer"] == "paletted"
    assert result.n_features < sum(n_components(coherent_mask(), 4).values())


def test_gdal_geopackage_validator_accepts_the_file(outputs):
    _, result = outputs
    proc = subprocess.run([QGIS_PY, "-m", "osgeo_utils.samples.validate_gpkg", str(result.path)],
                          capture_output=True, text=True, timeout=120)
    if "No module named" in proc.stderr:
        pytest.skip("GDAL's validate_gpkg.py (Debian python3-gdal) is not installed")
    assert proc.returncode == 0, proc.stdout + proc.stderr


MASK_SCRIPT = r"""
import json, sys
from osgeo import gdal
from qgis.core import QgsApplication, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
out = {}
for key, path in (("styled", sys.argv[1]), ("unstyled", sys.argv[2])):
    rl = QgsRasterLayer(path, key)
    r = rl.renderer()
    out[key] = {"valid": rl.isValid(), "renderer": r.type(),
                "classes": [[int(c.value), c.label, c.color.name(), c.color.alpha()]
                            for c in r.classes()]}
    del r, rl
band = gdal.Info(sys.argv[1], format="json")["bands"][0]  # what gdalinfo reports
out["gdal_categories"] = band.get("categories")
out["gdal_nodata"] = band.get("noDataValue")
app.exitQgis()
print("RESULT" + json.dumps(out))
"""


def test_qgis_legend_shows_the_class_names_and_only_the_classes(tmp_path):
    """The 7-class demo listed "7" … "255" in QGIS: a TIFF palette always has 256 entries, and
    QGIS 3.22 makes a class of each. The mask's .qml lists the classes only, by name."""
    mask = tmp_path / "mask.tif"
    write_cog(mask)  # class names with markup, quotes, a control character, non-ASCII
    unstyled = tmp_path / "plain" / "mask.tif"  # no .qml: only GDAL's category names
    unstyled.parent.mkdir()
    for p in (mask, mask.with_name("mask.tif.aux.xml")):
        shutil.copy(p, unstyled.parent / p.name)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR="/tmp")
    proc = subprocess.run([QGIS_PY, "-c", MASK_SCRIPT, str(mask), str(unstyled)], env=env,
                          capture_output=True, text=True, timeout=180)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, f"QGIS failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    got = json.loads(line[0][len("RESULT"):])
    names = [expected_name(c.name) for c in HOSTILE_CLASSES]
    styled = got["styled"]
    assert styled["valid"] and styled["renderer"] == "paletted"
    assert styled["classes"] == [
        [c.id, expected_name(c.name), "#{:02x}{:02x}{:02x}".format(*c.color), 255]
        for c in HOSTILE_CLASSES]
    assert got["gdal_categories"] == names and got["gdal_nodata"] == 255
    # without the style QGIS still names the classes (GDAL's category names), but lists
    # every palette entry: the .qml is what keeps "5" … "255" out of the legend
    plain = got["unstyled"]["classes"]
    assert [label for _, label, _, _ in plain[: len(names)]] == names
    assert len(plain) == 256
