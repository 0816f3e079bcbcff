"""Training segmentation models on scenes and labels (``geoseg train``).

Modules: :mod:`~geoseg.train.config` (settings), :mod:`~geoseg.train.chips` (validation
blocks and chips, training areas and random chips), :mod:`~geoseg.train.loop` (optimisation
and metrics), :mod:`~geoseg.train.pretrained` (starting from a bundle or an encoder),
:mod:`~geoseg.train.run` (the entry point, :func:`train_model`). torch is imported lazily.
"""

from __future__ import annotations

from geoseg.train.config import TrainConfig
from geoseg.train.run import TrainResult, train_model

__all__ = ["TrainConfig", "TrainResult", "train_model"]
