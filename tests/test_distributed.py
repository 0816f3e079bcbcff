"""A real distributed LocalCluster with two worker processes gives the same mask."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from geoseg.config import PredictConfig
from geoseg.pipeline import predict_scene

from .conftest import TINY_UNET


@pytest.mark.slow
def test_local_cluster_two_processes(make_scene, make_bundle, tmp_path) -> None:
    from distributed import Client, LocalCluster

    scene, bundle = make_scene(height=300, width=500), make_bundle(TINY_UNET)
    cfg = PredictConfig(block_size=128, confidence=True)
    local = predict_scene(scene, bundle, tmp_path / "local.tif", cfg)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        result = predict_scene(scene, bundle, tmp_path / "dist.tif", cfg, client=client, threads=1)
        # each worker process loaded the model once, through the plugin
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert len(plugins) == 2
        assert all(any(p.startswith("geoseg-model-") for p in names) for names in plugins.values())
        processed = client.run(lambda dask_worker: len(dask_worker.data) >= 0)
        assert len(processed) == 2
    assert result.class_pixels == local.class_pixels
    for role in ("mask", "confidence"):
        with rasterio.open(local.outputs[role]) as a, rasterio.open(result.outputs[role]) as b:
            assert np.array_equal(a.read(), b.read())
