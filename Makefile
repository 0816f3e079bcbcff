# geoseg: `make demo` maps the real Sentinel-2 sample, `make test` lints and runs the test suite.
# Both create .venv and install geoseg into it first (torch + torchvision as a matched pair).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
GEOSEG := $(VENV)/bin/geoseg
DEMO   ?= demo-out
DEMO_MODEL ?= models/s2-demo-landcover.safetensors

.PHONY: install lint test test-fast demo demo-model bench bench-throughput bench-vectorize bench-memory bench-batch bench-gpu clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# ruff and mypy as configured in pyproject.toml (seconds): first in `make test`, so in CI
lint: install
	$(PY) -m ruff check geoseg tests benchmarks scripts
	$(PY) -m mypy geoseg

# every test, slow ones included (end-to-end on the real sample, real clusters, Slurm)
test: lint
	$(PY) -m pytest -q

# the quick tier: everything not marked slow, one module per pytest-xdist worker (each test runs
# torch on one thread): 154 s on 2 quiet cores, 244 s in one process (see docs/testing.md)
TEST_WORKERS ?= 2
test-fast: install
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile

demo: install
	$(GEOSEG) run "$$($(PY) -m geoseg.sample --folder)" -m $(DEMO_MODEL) -o $(DEMO)/maps \
	    --min-area 2000 --confidence
	$(PY) -m geoseg.rules $(DEMO)/s2_rules.tif
	$(GEOSEG) evaluate $(DEMO)/maps/s2/s2.tif --reference $(DEMO)/s2_rules.tif \
	    --json $(DEMO)/s2_vs_rules.json
	@echo "open $(DEMO)/maps/report.html, or $(DEMO)/maps/s2/s2.tif and s2.gpkg in QGIS"

demo-model: install
	$(PY) scripts/make_demo_model.py --work demo-train --out $(DEMO_MODEL)

# all benchmarks, one after the other on a quiet machine (about 45 min on 2 cores)
bench: bench-throughput bench-vectorize bench-memory

bench-throughput: install
	$(PY) -m benchmarks.throughput

bench-vectorize: install
	$(PY) -m benchmarks.vectorize

bench-memory: install
	$(PY) -m benchmarks.memory

# a batch of 8 scenes sequential against scenes in flight (real model and a simulated accelerator),
# each row 3 times, interleaved (medians), then the process tree at 16 Mpx against a plain TorchGeo
# loop (about 15 min on 2 cores)
bench-batch: install
	$(PY) -m benchmarks.batch --repeat 3
	$(PY) -m benchmarks.tree

# one GPU and its node's cores: U-Net and DeepLabV3+ ResNet-34, bf16/fp16 (never run on a GPU yet)
bench-gpu: install
	$(PY) -m benchmarks.gpu

clean:
	rm -rf $(DEMO) demo-train .pytest_cache
