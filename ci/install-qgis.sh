#!/usr/bin/env bash
# Install headless PyQGIS (Debian's QGIS LTR, with Debian's python3-gdal and its validate_gpkg.py)
# for tests/test_qgis.py. Idempotent: does nothing when /usr/bin/python3 can import qgis.core.
set -euo pipefail
if /usr/bin/python3 -c "import qgis.core" >/dev/null 2>&1; then
    echo "install-qgis: PyQGIS already importable, nothing to do"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends python3-qgis qgis-providers python3-gdal
/usr/bin/python3 -c "from qgis.core import Qgis; print('install-qgis: QGIS', Qgis.QGIS_VERSION)"
