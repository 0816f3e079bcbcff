#!/usr/bin/env bash
# The GPU proof on a lent GPU machine, as one prepared command (issue 20):
#   bash ../shared/tools/gpu-wheels.sh cloudpickle toolz msgpack psutil sortedcontainers attrs \
#       certifi pyparsing urllib3 pytest pluggy iniconfig typing_extensions packaging  # fills .whl/
#   python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl pyproj pystac
#       # with their dependencies (11 MB): the batch step writes STAC Items and reprojects
#   (on the GPU machine, .whl carried)  bash benchmarks/gpu_proof.sh tests unet deeplabv3plus
# Steps run in the order given, each under its own time limit, and write under $OUT:
#   tests          the gpu tests (mixed precision vs fp32, the CUDA prediction and normalization)
#   unet | deeplabv3plus
#                  python -m benchmarks.gpu for that architecture (bf16 and fp16), results as
#                  benchmarks/results/gpu-<arch>.{json,md}; join them here afterwards with
#                  python -m benchmarks.gpu --merge gpu-unet gpu-deeplabv3plus
#   batch          python -m benchmarks.batch on the GPU: 8 scenes of 4096², the demo model, one
#                  scene at a time against scenes in flight, masks only ($BATCH_ARGS adds, e.g.
#                  "--gpu-tasks 4"), as benchmarks/results/${BATCH_NAME:-batch-gpu}.{json,md}
#   bench          python -m benchmarks.gpu $BENCH_ARGS --name $BENCH_NAME (default gpu), under
#                  $SECONDS_BENCH; e.g. BENCH_ARGS="--tiles 512 --naive-precisions bf16
#                  --trained models/s2-demo-landcover.safetensors .gpu-data/s2.tif" with the
#                  sample stacked by `python -m geoseg.sample .gpu-data/s2.tif` and carried
# A step that fails or runs out of time does not stop the next one: the machine's time is short.
# The GPU machine has torch, numpy, click, rich, pyyaml and safetensors but not rasterio, dask,
# smp or pyogrio: the prediction path comes from .whl/ and vectorizing (pyogrio, 33 MB, over
# what may be carried) is left out; it is CPU work, measured by benchmarks/vectorize.py.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-proof}
mkdir -p "$OUT"
SECONDS_TESTS=${SECONDS_TESTS:-150} SECONDS_UNET=${SECONDS_UNET:-300}
SECONDS_DEEPLAB=${SECONDS_DEEPLAB:-220}
log() { echo "[gpu_proof $(date +%T)] $*" | tee -a "$OUT/steps.txt"; }

python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    > "$OUT/pip.txt" 2>&1 || { log "wheels did not install"; tail "$OUT/pip.txt"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 - > "$OUT/versions.txt" 2>&1 <<'EOF' || { log "imports failed"; cat "$OUT/versions.txt"; exit 1; }
import platform, torch, rasterio, dask, distributed, segmentation_models_pytorch as smp
import geoseg.pipeline, geoseg.cluster, benchmarks.gpu  # noqa: F401
print(platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      torch.cuda.get_device_name(0), "rasterio", rasterio.__version__, "gdal",
      rasterio.__gdal_version__, "dask", dask.__version__, "smp", smp.__version__)
EOF
log "$(cat "$OUT/versions.txt")"

for step in "$@"; do
    log "start $step"
    case "$step" in
        tests)
            timeout "$SECONDS_TESTS" python3 -m pytest -p no:cacheprovider -q -s -m gpu \
                tests/test_predict.py tests/test_cluster.py > "$OUT/pytest-gpu.txt" 2>&1
            log "gpu tests: exit $?"
            timeout 120 python3 -m pytest -p no:cacheprovider -q -k cuda tests/test_normalize.py \
                > "$OUT/pytest-normalize.txt" 2>&1
            log "normalize on cuda: exit $?" ;;
        unet|deeplabv3plus)
            limit=$SECONDS_UNET
            if [ "$step" = deeplabv3plus ]; then limit=$SECONDS_DEEPLAB; fi
            # cluster.gpu_tasks at its default (2) only: each row costs a cluster start
            timeout "$limit" python3 -m benchmarks.gpu --archs "$step" --gpu-tasks 2 \
                --skip-vectorize --name "gpu-$step" > "$OUT/bench-$step.log" 2>&1
            log "benchmark $step: exit $?"
            cp benchmarks/results/gpu-"$step".* "$OUT/" 2>/dev/null ;;
        batch)
            # shellcheck disable=SC2086  # BATCH_ARGS: several arguments
            timeout "${SECONDS_BATCH:-240}" python3 -m benchmarks.batch --device cuda \
                --skip-simulated --no-vectorize --scenes 8 --size 4096 ${BATCH_ARGS:-} \
                --name "${BATCH_NAME:-batch-gpu}" > "$OUT/batch.log" 2>&1
            log "batch: exit $?"
            cp benchmarks/results/"${BATCH_NAME:-batch-gpu}".* "$OUT/" 2>/dev/null ;;
        bench)
            # shellcheck disable=SC2086  # BENCH_ARGS: several arguments
            timeout "${SECONDS_BENCH:-300}" python3 -m benchmarks.gpu ${BENCH_ARGS:-} \
                --skip-vectorize --name "${BENCH_NAME:-gpu}" > "$OUT/bench.log" 2>&1
            log "benchmark: exit $?"
            cp benchmarks/results/"${BENCH_NAME:-gpu}".* "$OUT/" 2>/dev/null ;;
        *) log "unknown step $step" ;;
    esac
done
log "done"
