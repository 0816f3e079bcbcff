"""Architectures geoseg can build: any segmentation-models-pytorch architecture, never pretrained.

smp (and torchvision under it) is imported lazily, inside the functions, so that importing
geoseg stays cheap and free of side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geoseg.errors import BundleError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ARCHITECTURES",
    "NON_LOCAL_ARCHITECTURES",
    "RECOMMENDED_HALO",
    "build_model",
    "inference_tile_size",
    "model_align",
    "recommended_halo",
]

#: smp architecture names accepted in bundles (lower case, as ``smp.create_model`` takes them).
ARCHITECTURES: tuple[str, ...] = (
    "unet",
    "unetplusplus",
    "fpn",
    "linknet",
    "manet",
    "pspnet",
    "pan",
    "deeplabv3",
    "deeplabv3plus",
    "upernet",
    "segformer",
    "dpt",
)

#: Architectures with an image-level (global) pooling or attention branch: their output at a
#: pixel depends on the whole input tile, so the mask depends on the tile size. geoseg keeps
#: their tile size fixed at the bundle's unless told otherwise (then it warns).
NON_LOCAL_ARCHITECTURES: frozenset[str] = frozenset(
    {"deeplabv3", "deeplabv3plus", "pspnet", "pan", "upernet", "segformer", "dpt"}
)

#: Inference tile side (px) for local architectures when none is configured. The model's cost
#: per pixel is flat in the tile size (U-Net/ResNet-34 on 2 CPU cores: 0.74 Mpx/s at 512² and at
#: 1024²), but the halo is paid per tile: at a 128 px halo a 512 tile spends 4 × the core's
#: pixels, a 1024 tile 1.78 ×. See ``benchmarks/throughput.py`` and the README.
AUTO_TILE_SIZE = 1024

#: Halo (pixels, each side) at which the mask was measured identical across tile and block
#: sizes for random-init ResNet encoders; see ``tests/test_predict.py`` and the README.
RECOMMENDED_HALO: dict[str, int] = {"unet": 128, "deeplabv3plus": 128}
_DEFAULT_HALO = 128


def inference_tile_size(arch: str, bundle_tile: int, halo: int) -> int:
    """The tile side (px) geoseg runs ``arch`` at when no tile size is configured.

    Architectures that pool over the whole tile (:data:`NON_LOCAL_ARCHITECTURES`) keep the
    bundle's tile, since their mask depends on it. Local ones get at least
    :data:`AUTO_TILE_SIZE` and at least ``4 · halo`` (a core of half the tile), never less than
    the bundle's tile: fewer, larger tiles pay the halo less often.
    """
    if arch.lower() in NON_LOCAL_ARCHITECTURES:
        return bundle_tile
    return max(bundle_tile, AUTO_TILE_SIZE, 4 * halo)


def recommended_halo(arch: str) -> int:
    """The halo (pixels per side) geoseg recommends for ``arch``."""
    return RECOMMENDED_HALO.get(arch.lower(), _DEFAULT_HALO)


def build_model(
    arch: str,
    encoder: str,
    in_channels: int,
    classes: int,
    arch_kwargs: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """Build an smp model with random weights (``encoder_weights=None``: nothing is downloaded).

    Raises:
        BundleError: unknown architecture or encoder, or arguments smp rejects.
    """
    arch = arch.lower()
    if arch not in ARCHITECTURES:
        raise BundleError(
            f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    import segmentation_models_pytorch as smp

    if encoder not in smp.encoders.get_encoder_names():
        raise BundleError(
            f"unknown encoder {encoder!r} for {arch}; e.g. resnet18, resnet34, efficientnet-b0, "
            "mobilenet_v2 (see segmentation_models_pytorch.encoders.get_encoder_names())"
        )
    try:
        model = smp.create_model(
            arch,
            encoder_name=encoder,
            encoder_weights=None,
            in_channels=in_channels,
            classes=classes,
            **(arch_kwargs or {}),
        )
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise BundleError(f"smp cannot build {arch}/{encoder} with {arch_kwargs}: {exc}") from exc
    return model.eval()


def model_align(model: torch.nn.Module) -> int:
    """The model's size divisor in pixels: its total down-sampling (``encoder.output_stride``)."""
    encoder = getattr(model, "encoder", None)
    stride = getattr(encoder, "output_stride", 32)
    return int(stride) if isinstance(stride, int) and stride > 0 else 32
