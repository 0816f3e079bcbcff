# geoseg: `make demo` maps the real Sentinel-2 sample, `make test` runs the test suite.
# Both create .venv and install geoseg into it first (torch + torchvision as a matched pair).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GEOSEG := $(VENV)/bin/geoseg
DEMO   ?= demo-out

.PHONY: install test test-fast demo bench-memory clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(PY) -m geoseg.sample $(DEMO)/s2_sample.tif
	$(GEOSEG) model init --arch unet --encoder resnet34 --bands B02,B03,B04,B08 \
	    --classes water,wetland,trees,crops,bare,built --stats-from $(DEMO)/s2_sample.tif \
	    --tile-size 1024 --halo 128 -o $(DEMO)/untrained-unet.safetensors --overwrite
	$(GEOSEG) predict $(DEMO)/s2_sample.tif -m $(DEMO)/untrained-unet.safetensors \
	    -o $(DEMO)/s2_mask.tif --confidence --overwrite
	$(GEOSEG) vectorize $(DEMO)/s2_mask.tif --out $(DEMO)/s2_landcover.gpkg --min-area 2000 \
	    --overwrite
	@echo "open $(DEMO)/s2_mask.tif and $(DEMO)/s2_landcover.gpkg in QGIS (styled by class)"

bench-memory: install
	$(PY) -m benchmarks.memory

clean:
	rm -rf $(DEMO) .pytest_cache
