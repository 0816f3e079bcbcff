"""GPU throughput: model-only ceiling, geoseg end to end, the naive loop and the node's CPU limit.

    python -m benchmarks.gpu [--quick] [--size 8192] [--archs unet deeplabv3plus]
                             [--precisions bf16 fp16] [--gpu-tasks 1 2] [--device cuda]
                             [--skip-vectorize] [--name gpu-unet]
    python -m benchmarks.gpu --merge gpu-unet gpu-deeplabv3plus   # one table: gpu.{json,md}

Made for one GPU plus its node's cores (``make bench-gpu``; ``--device cpu --quick`` runs the
same code on a CPU, as a smoke test). On a synthetic 4-band uint16 DEFLATE tiled GeoTIFF and
random-init ResNet-34 bundles (U-Net and DeepLabV3+, tile 512, halo 128):

1. **ceiling**: the forward pass alone on tensors already on the device, at tile 512 and batch
   ``--batch`` (and U-Net at geoseg's default tile), channels-last, under autocast;
2. **geoseg**: :func:`geoseg.pipeline.predict_scene` from file to finished COG on the local
   cluster ``geoseg run`` starts (one worker per GPU, ``cluster.gpu_tasks`` prediction tasks at
   once so that blocks are read while another runs the model), block 2048; the GPU's busy
   percentage is sampled with ``nvidia-smi`` every 100 ms;
3. **naive**: boundless rasterio window reads at tile 512, batch 1, forward under autocast,
   ``argmax`` on the device, window writes;
4. **CPU-stage limit**: the same geoseg path with a model that costs the GPU next to nothing
   (U-Net/ResNet-18, encoder depth 3, 8-channel decoder): reading, decoding, normalizing,
   copies to the device, encoding and writing the COG; and vectorizing the mask on a local
   cluster of one single-threaded worker per core.

Mpx/s counts scene pixels (each output pixel once) unless it says "model px".
Results go to ``benchmarks/results/gpu.json`` and ``gpu.md`` (``gpu-quick.*`` with ``--quick``,
``NAME.*`` with ``--name NAME``). A GPU machine's time is short and one command's is capped, so
the architectures can run as separate commands (``--archs unet --name gpu-unet``, ...) and be
joined with ``--merge``. ``--skip-vectorize`` (implied where pyogrio cannot be imported, as on a
GPU machine that was brought only the prediction wheels) leaves out the vectorizing row, which is
CPU work measured by ``benchmarks/vectorize.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.memory import write_scene
from benchmarks.throughput import autocast, make_bundle, naive, tile_stats

RESULTS = Path(__file__).parent / "results"
TILE, HALO = 512, 128
CORES = len(os.sched_getaffinity(0))


#: Block side, px: 16 blocks on the 8192² scene, so that ``gpu_tasks`` tasks have blocks to
#: overlap (the gpu-node preset uses 4096 for production scenes).
BLOCK = 2048


def predict_config(device: str, precision: str, tile: int | None, batch: int):
    from geoseg.config import PredictConfig

    return PredictConfig(tile_size=tile, halo=HALO, block_size=BLOCK, batch_size=batch,
                         device=device, precision=precision if device != "cpu" else "fp32",
                         channels_last=True)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ceiling(bundle: Path, device: str, precision: str, tile: int, batch: int,
            seconds: float) -> float:
    """Model px per second of the forward pass on device-resident input."""
    import torch

    from geoseg.models.bundle import load_bundle

    model = load_bundle(bundle).build().to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 4, tile, tile, device=device).contiguous(
        memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(3):
            model(x)
        _sync(device)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x)
            n += 1
        _sync(device)
        elapsed = time.perf_counter() - start
    del model, x
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return n * batch * tile * tile / elapsed


class GpuBusy:
    """Samples ``nvidia-smi``'s GPU utilization every 100 ms while in the ``with`` block."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> GpuBusy:
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", "0", "-lms", "100"], stdout=subprocess.PIPE, text=True)
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


class Clusters:
    """The local clusters ``geoseg run`` starts, one per ``cluster.gpu_tasks`` value, each
    started on first use and kept for every later row: a worker initializes CUDA and loads
    each model once, as in a batch, instead of once per row."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._stack = contextlib.ExitStack()
        self._open: dict[int, tuple[Any, Any, int]] = {}

    def __enter__(self) -> Clusters:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def get(self, gpu_tasks: int) -> tuple[Any, Any, int]:
        """``(client, task policy, torch threads)`` of the cluster for ``gpu_tasks``."""
        from geoseg.cluster import connect, gpu_workers, task_policy, torch_threads
        from geoseg.config import ClusterConfig

        if gpu_tasks not in self._open:
            cfg = ClusterConfig(workers=None if self.device != "cpu" else 1,
                                threads_per_worker=4, gpu_tasks=gpu_tasks)
            gpus = gpu_workers(cfg, self.device)
            client = self._stack.enter_context(connect(cfg, device=self.device))
            self._open[gpu_tasks] = (client, task_policy(cfg, gpu_workers=gpus > 0),
                                     torch_threads(cfg, gpus) or CORES)
        return self._open[gpu_tasks]


def geoseg_run(clusters: Clusters, scene: Path, bundle: Path, out: Path, precision: str,
               tile: int | None, batch: int, gpu_tasks: int) -> dict[str, Any]:
    """geoseg on the local cluster ``geoseg run`` starts: seconds, GPU busy %, tile stats.

    An untimed run of the same plan first loads the model and warms every prediction slot."""
    from geoseg.pipeline import plan_prediction, run_prediction

    client, policy, threads = clusters.get(gpu_tasks)
    pcfg = predict_config(clusters.device, precision, tile, batch)
    warm = out.with_name("warm.tif")
    run_prediction(plan_prediction(scene, bundle, warm, pcfg, overwrite=True,
                                   threads=threads), client, policy=policy)
    plan = plan_prediction(scene, bundle, out, pcfg, overwrite=True, threads=threads)
    with GpuBusy() as busy:
        start = time.perf_counter()
        run_prediction(plan, client, policy=policy)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "gpu_busy_pct": busy.mean, "gpu_tasks": gpu_tasks,
            **tile_stats(plan)}


def trained_agreement(scene: Path, bundle: Path, tmp: Path, device: str,
                      precisions: list[str]) -> dict[str, float]:
    """Share of pixels each autocast precision classifies as fp32 does, for a trained bundle on
    a real scene (random-init models have near-tied logits everywhere, trained ones do not)."""
    from geoseg.config import PredictConfig
    from geoseg.pipeline import predict_scene

    def mask(precision: str) -> Path:
        cfg = PredictConfig(device=device, precision=precision if device != "cpu" else "fp32",
                            channels_last=True)
        return Path(predict_scene(scene, bundle, tmp / f"trained-{precision}.tif", cfg,
                                  overwrite=True).outputs["mask"])

    reference = mask("fp32")
    return {p: agreement(mask(p), reference) for p in precisions}


def vectorize_rate(mask: Path, out: Path) -> float:
    """Seconds to vectorize ``mask`` on a local cluster of one 1-thread worker per core."""
    from distributed import Client, LocalCluster

    from geoseg.vectorize import vectorize_mask

    with LocalCluster(n_workers=CORES, threads_per_worker=1, dashboard_address=":0") as c, \
            Client(c) as client:
        start = time.perf_counter()
        vectorize_mask(mask, out, client=client, overwrite=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1024² scene, U-Net only, one precision, 1 s ceilings")
    parser.add_argument("--size", type=int, default=None, help="scene side, px (default 8192)")
    parser.add_argument("--archs", nargs="+", default=None,
                        help="architectures (default: unet deeplabv3plus)")
    parser.add_argument("--precisions", nargs="+", default=None,
                        help="autocast precisions (default: bf16 fp16)")
    parser.add_argument("--gpu-tasks", type=int, nargs="+", default=[1, 2],
                        help="cluster.gpu_tasks of the geoseg rows (default: 1 2)")
    parser.add_argument("--batch", type=int, default=16, help="tiles of 512² per forward pass")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    parser.add_argument("--skip-vectorize", action="store_true",
                        help="leave out vectorizing (implied when pyogrio is missing)")
    parser.add_argument("--name", default=None,
                        help="results file stem (default gpu, or gpu-quick with --quick)")
    parser.add_argument("--merge", nargs="+", metavar="NAME", default=None,
                        help="join the results of earlier runs (stems in benchmarks/results) "
                             "into gpu.{json,md} (or --name) and exit")
    parser.add_argument("--tiles", nargs="+", default=None, choices=[str(TILE), "default"],
                        help="U-Net tiles (default: 512 default; DeepLabV3+ always 512)")
    parser.add_argument("--naive-precisions", nargs="*", default=None,
                        help="precisions of the naive loop (default: those of --precisions)")
    parser.add_argument("--trained", nargs=2, metavar=("BUNDLE", "SCENE"), default=None,
                        help="also measure each precision's agreement with fp32 for a trained "
                             "bundle on a real scene (e.g. the demo bundle on the S2 sample)")
    args = parser.parse_args()
    if args.merge:
        write_results(merge([json.loads((RESULTS / f"{n}.json").read_text())
                             for n in args.merge]), args)
        return
    size = args.size or (1024 if args.quick else 8192)
    archs = args.archs or (["unet"] if args.quick else ["unet", "deeplabv3plus"])
    precisions = args.precisions or (["bf16"] if args.quick else ["bf16", "fp16"])
    naive_precisions = precisions if args.naive_precisions is None else args.naive_precisions
    unet_tiles = [TILE if t == str(TILE) else None for t in (args.tiles or [str(TILE), "default"])]
    seconds = 1.0 if args.quick else 5.0
    device = args.device
    mpx = size * size / 1e6
    out: dict[str, Any] = {"benchmark": "gpu", "scene_px": size, "device": device,
                           "cores": CORES, "rows": [], "cpu_stage": {}}

    def log(**kw: Any) -> None:  # each result as it comes, and the files so far
        print(json.dumps(kw), flush=True)  # noqa: T201
        write_results(out, args)

    with tempfile.TemporaryDirectory() as d, Clusters(device) as clusters:
        tmp = Path(d)
        if args.trained:
            out["trained_agreement"] = {
                "bundle": Path(args.trained[0]).name, "scene": Path(args.trained[1]).name,
                **trained_agreement(Path(args.trained[1]), Path(args.trained[0]), tmp, device,
                                    precisions)}
            log(trained_agreement=out["trained_agreement"])
        scene = tmp / "scene.tif"
        write_scene(scene, size)
        tiny = tmp / "tiny.safetensors"
        make_bundle(tiny, "unet", "resnet18", encoder_depth=3, decoder_channels=[8, 8, 8])
        # the model sees 3-4 × more pixels at 512 than at 1024 (None: geoseg's default tile)
        for tile in [TILE] + ([None] if "unet" in archs and None in unet_tiles else []):
            t = tile or 1024
            limit = geoseg_run(clusters, scene, tiny, tmp / "tiny.tif", "fp32", tile,
                               max(1, args.batch * TILE * TILE // (t * t)), max(args.gpu_tasks))
            out["cpu_stage"][str(limit["tile"])] = {
                "predict_s": limit["seconds"], "predict_mpx_s": round(mpx / limit["seconds"], 2),
                "gpu_busy_pct": limit["gpu_busy_pct"], "seen_per_output_px":
                limit["seen_per_output_px"]}
        if not (args.skip_vectorize or _missing("pyogrio")):
            v = vectorize_rate(tmp / "tiny.tif", tmp / "tiny.gpkg")
            out["vectorize"] = {"seconds": round(v, 2), "mpx_s": round(mpx / v, 2)}
        log(cpu_stage=out["cpu_stage"], vectorize=out.get("vectorize"))
        for arch in archs:
            bundle = tmp / f"{arch}.safetensors"
            make_bundle(bundle, arch)
            tiles = unet_tiles if arch == "unet" else [TILE]
            reference = tmp / f"{arch}-fp32.tif"  # the full-precision mask, tile 512
            geoseg_run(clusters, scene, bundle, reference, "fp32", TILE, args.batch,
                       max(args.gpu_tasks))
            for precision in precisions:
                for tile in tiles:
                    t = tile or 1024
                    batch = max(1, args.batch * TILE * TILE // (t * t))
                    model_px = ceiling(bundle, device, precision, t, batch, seconds)
                    for gpu_tasks in args.gpu_tasks:
                        mask = tmp / f"{arch}-{precision}-{t}.tif"
                        g = geoseg_run(clusters, scene, bundle, mask, precision, tile, batch,
                                       gpu_tasks)
                        row = {"arch": arch, "precision": precision, "batch": batch,
                               "ceiling_model_mpx_s": round(model_px / 1e6, 1),
                               "ceiling_scene_mpx_s": round(
                                   model_px / 1e6 / g["seen_per_output_px"], 1),
                               "geoseg_mpx_s": round(mpx / g["seconds"], 2), **g}
                        row["geoseg_over_ceiling"] = round(
                            row["geoseg_mpx_s"] / row["ceiling_scene_mpx_s"], 3)
                        row["geoseg_over_cpu_limit"] = round(row["geoseg_mpx_s"] / out[
                            "cpu_stage"][str(g["tile"])]["predict_mpx_s"], 3)
                        if tile == TILE:
                            row["agrees_with_fp32"] = agreement(mask, reference)
                        out["rows"].append(row)
                        log(**row)
                if precision in naive_precisions:
                    n = naive(scene, bundle, HALO, tmp, TILE, device, precision)
                    out.setdefault("naive", []).append(
                        {"arch": arch, "precision": precision, "seconds": round(n, 2),
                         "mpx_s": round(mpx / n, 2)})
                    log(naive=out["naive"][-1])
    write_results(out, args)


def agreement(mask: Path, reference: Path) -> float:
    """Share of the pixels labelled in both that ``mask`` gives ``reference``'s class (0-1):
    the overall accuracy of :func:`geoseg.evaluate.evaluate_mask`."""
    from geoseg.evaluate import evaluate_mask

    return round(evaluate_mask(mask, reference).scores.overall_accuracy, 5)


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _percent(share: float | None) -> str:
    return f"{share:.2%}" if share is not None else ""


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several runs on the same kind of machine and scene: rows and naive
    loops joined, each marked with its run (1, 2, ...); each run's CPU-stage limit is kept
    (``cpu_stage_runs``; a row's ``geoseg_over_cpu_limit`` is against its own run's), and
    ``cpu_stage`` is the lowest of them per tile."""
    out = dict(parts[0], rows=[], naive=[], cpu_stage={}, cpu_stage_runs=[])
    for run, part in enumerate(parts, 1):
        if (part["scene_px"], part["device"], part["machine"]) != (
                out["scene_px"], out["device"], out["machine"]):
            raise SystemExit("--merge: the runs differ in scene size, device or machine")
        out["rows"] += [dict(row, run=run) for row in part["rows"]]
        out["naive"] += [dict(n, run=run) for n in part.get("naive", [])]
        out["cpu_stage_runs"].append(part["cpu_stage"])
        for tile, stage in part["cpu_stage"].items():
            out["cpu_stage"][tile] = min(stage, out["cpu_stage"].get(tile, stage),
                                         key=lambda c: c["predict_mpx_s"])
        for key in ("vectorize", "trained_agreement"):
            if key in part:
                out.setdefault(key, part[key])
    return out


def write_results(out: dict[str, Any], args: argparse.Namespace) -> None:
    if "machine" not in out:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPU, {gpu}"
        out.update(machine=machine, torch=torch.__version__)
    machine = out["machine"]
    RESULTS.mkdir(exist_ok=True)
    name = args.name or ("gpu-quick" if args.quick else "gpu")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    limits = "; ".join(
        (f"run {run}, " if "cpu_stage_runs" in out else "") + f"tile {t}: {c['predict_mpx_s']} "
        f"Mpx/s (GPU busy {c['gpu_busy_pct']} %)"
        for run, stages in enumerate(out.get("cpu_stage_runs", [out["cpu_stage"]]), 1)
        for t, c in stages.items())
    naive = {(n["arch"], n["precision"]): n["mpx_s"] for n in out.get("naive", [])}
    stand_in = {(n["arch"], p): n for n in out.get("naive", [])  # --naive-precisions
                for p in ("bf16", "fp16") if (n["arch"], p) not in naive}
    naive.update({key: n["mpx_s"] for key, n in stand_in.items()})
    vectorize = (f"Vectorizing on {out['cores']} 1-thread workers: "
                 f"{out['vectorize']['mpx_s']} Mpx/s." if "vectorize" in out else
                 "Vectorizing: not measured here (see vectorize.md).")
    lines = [
        f"Machine: {machine}; torch {out['torch']}; device {out['device']}; scene "
        f"{out['scene_px']}² 4-band uint16 DEFLATE tiled (512), synthetic; ResNet-34 random "
        f"init, halo {HALO}, block {BLOCK}, channels-last; geoseg on the local cluster "
        "`geoseg run` starts (one worker per GPU, 4 threads as in configs/gpu-node.yaml).",
        "",
        f"CPU-stage limit (a near-free model, same path, predict to COG): {limits}. {vectorize}",
        "",
        "| arch | precision | tile | batch | gpu_tasks | ceiling model Mpx/s | ceiling scene "
        "Mpx/s | geoseg Mpx/s | vs ceiling | vs CPU-stage limit | GPU busy % | naive Mpx/s | "
        "vs naive | agrees with fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        nv = naive.get((r["arch"], r["precision"]))
        lines.append(
            f"| {r['arch']} | {r['precision']} | {r['tile']} | {r['batch']} | {r['gpu_tasks']} | "
            f"{r['ceiling_model_mpx_s']} | {r['ceiling_scene_mpx_s']} | {r['geoseg_mpx_s']} | "
            f"{r['geoseg_over_ceiling']} | {r['geoseg_over_cpu_limit']} | {r['gpu_busy_pct']} | "
            f"{nv or ''} | {round(r['geoseg_mpx_s'] / nv, 2) if nv else ''} | "
            f"{_percent(r.get('agrees_with_fp32'))} |")
    lines += [f"\nThe {a} {p} rows are compared with the naive loop at {n['precision']}."
              for (a, p), n in stand_in.items() if any(
                  (r["arch"], r["precision"]) == (a, p) for r in out["rows"])]
    if "run" in (out["rows"] or [{}])[0]:
        lines += ["", "Rows from runs " + ", ".join(
            f"{run} ({sum(r['run'] == run for r in out['rows'])} rows)"
            for run in range(1, len(out["cpu_stage_runs"]) + 1)) + "; each row's ratio to the "
            "CPU-stage limit is against its own run's."]
    if "trained_agreement" in out:
        t = out["trained_agreement"]
        shares = ", ".join(f"{p} {_percent(v)}" for p, v in t.items() if p not in (
            "bundle", "scene"))
        lines += ["", f"Trained bundle `{t['bundle']}` on the real scene `{t['scene']}`, same "
                  f"pixels as fp32 (geoseg's default tile, channels-last): {shares}."]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
