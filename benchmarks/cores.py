"""How many cores' worth of work this machine does with every core busy.

A 2-vCPU VM may be two hyperthreads of one physical core, or share its cores with neighbours:
then running two CPU-bound processes at once does much less than twice the work of one, and a
pipeline that overlaps its stages (scenes in flight) gains less than the core count promises.
:func:`core_scaling` measures it with the kind of work geoseg's CPU stages do (DEFLATE
decoding and encoding, numpy arithmetic on float32 planes): the same fixed amount of work in
one process, then in ``n`` processes at once.

    python -m benchmarks.cores
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import zlib

import numpy as np

__all__ = ["core_scaling"]


def _work(rounds: int) -> float:
    """``rounds`` units of DEFLATE + numpy work; returns the wall seconds it took."""
    rng = np.random.default_rng(0)
    plane = (rng.normal(1000, 50, (512, 512)).astype(np.uint16))
    raw = plane.tobytes()
    packed = zlib.compress(raw, 6)
    start = time.perf_counter()
    for _ in range(rounds):
        data = np.frombuffer(zlib.decompress(packed), np.uint16).reshape(plane.shape)
        x = (data.astype(np.float32) - 1000.0) / 50.0
        x = np.exp(-x * x) * 255.0
        zlib.compress(x.astype(np.uint8).tobytes(), 6)
    return time.perf_counter() - start


def core_scaling(rounds: int = 60, processes: int | None = None) -> dict[str, float]:
    """Work done with ``processes`` (default: every CPU) busy, in units of one busy core.

    Returns ``{"one_s": wall of one process alone, "all_s": the slowest of ``processes``
    running the same work at once, "processes": n, "scaling": n × one_s / all_s}``: 2.0 on
    two independent cores, about 1.2–1.3 on two hyperthreads of one core.
    """
    n = processes or os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        pool.apply(_work, (2,))  # warm-up: imports, page faults
        one = pool.apply(_work, (rounds,))
    with ctx.Pool(n) as pool:
        pool.map(_work, [2] * n)
        every = max(pool.map(_work, [rounds] * n, chunksize=1))
    return {"one_s": round(one, 3), "all_s": round(every, 3), "processes": n,
            "scaling": round(n * one / every, 3)}


if __name__ == "__main__":
    print(json.dumps(core_scaling()))  # noqa: T201
