"""Training segmentation models on scenes and labels (``geoseg train``).

Modules: :mod:`~geoseg.train.config` (settings), :mod:`~geoseg.train.chips` (chip lattice,
spatial validation split, reading), :mod:`~geoseg.train.loop` (optimisation and metrics),
:mod:`~geoseg.train.run` (the entry point, :func:`train_model`). torch is imported lazily.
"""

from __future__ import annotations

from geoseg.train.config import TrainConfig
from geoseg.train.run import TrainResult, train_model

__all__ = ["TrainConfig", "TrainResult", "train_model"]
