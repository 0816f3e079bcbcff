"""Open geoseg outputs in real, headless QGIS (Debian's PyQGIS under /usr/bin/python3).

Skipped when PyQGIS is not installed; ``ci/install-qgis.sh`` installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
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
