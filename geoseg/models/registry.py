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
    "HEAD_KEY",
    "INPUT_CONV_KEYS",
    "RECOMMENDED_HALO",
    "build_model",
    "inference_tile_size",
    "model_align",
    "recommended_halo",
    "static_align",
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


#: ``encoder_output_stride`` of the architectures that take one (smp's defaults); the others
#: run their encoder at output stride 32.
_OUTPUT_STRIDE = {"deeplabv3": 8, "deeplabv3plus": 16, "pan": 16}
#: ``encoder_depth`` defaults that are not 5.
_DEPTH = {"pspnet": 3, "dpt": 4}


def static_align(arch: str, arch_kwargs: dict[str, Any] | None = None) -> int:
    """The size divisor :func:`model_align` gives ``arch`` built with ``arch_kwargs``, in
    pixels, worked out without building it (no torch): smp encoders report
    ``min(output stride, 2 ** encoder_depth)``. The output stride is ``encoder_output_stride``
    for DeepLabV3 (default 8), DeepLabV3+ and PAN (default 16) and 32 for the others;
    ``encoder_depth`` defaults to 5 (PSPNet 3). Values smp would reject fall back to the
    defaults (smp refuses them when the model is built).
    """
    arch = arch.lower()
    kwargs = arch_kwargs or {}
    stride = _OUTPUT_STRIDE.get(arch, 32)
    if arch in _OUTPUT_STRIDE:
        stride = _int_in(kwargs.get("encoder_output_stride"), 1, 1024, stride)
    depth = _int_in(kwargs.get("encoder_depth"), 1, 16, _DEPTH.get(arch, 5))
    return min(stride, 2**depth)


def _int_in(value: Any, low: int, high: int, default: int) -> int:
    """``value`` if it is an int in ``[low, high]``, else ``default``."""
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
    return value if ok else default


#: State-dict key of the first convolution (the one that takes the input bands, its weight
#: ``(out, bands, kh, kw)``) of each family of smp encoders geoseg can build; a model holds
#: one of them. Checked against smp by ``tests/test_light_client.py``.
INPUT_CONV_KEYS: tuple[str, ...] = (
    "encoder.conv1.weight",                   # resnet, resnext, xception, timm-skresnet
    "encoder.layer0.conv1.weight",            # senet154, se_resnet, se_resnext
    "encoder.features.conv0.weight",          # densenet
    "encoder.features.conv1_1.conv.weight",   # dpn
    "encoder.features.0.weight",              # vgg
    "encoder.features.0.conv.weight",         # inceptionv4
    "encoder.features.0.0.weight",            # mobilenet_v2
    "encoder.conv2d_1a.conv.weight",          # inceptionresnetv2
    "encoder._conv_stem.weight",              # efficientnet
    "encoder.conv_stem.weight",               # timm-efficientnet, timm-tf_efficientnet_lite
    "encoder.patch_embed1.proj.weight",       # mit (Mix Transformer)
    "encoder.stage0.rbr_conv.0.conv.weight",  # mobileone
)

#: State-dict key of the segmentation head's convolution (``(classes, in, kh, kw)``) in every
#: smp architecture.
HEAD_KEY = "segmentation_head.0.weight"
