"""Training settings: one pydantic model at the boundary (CLI options, or Python callers)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geoseg.models.bundle import ClassSpec, check_class_names

__all__ = ["TrainConfig"]


class TrainConfig(BaseModel):
    """How a model is built and trained. Ignored when resuming: arch, encoder, arch_kwargs,
    bands, classes, tile_size and halo (they come from the bundle)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = Field("unet", description="smp architecture, e.g. unet, deeplabv3plus, fpn")
    encoder: str = Field("resnet18", description="smp encoder, e.g. resnet18, resnet34")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict,
                                        description="extra smp constructor arguments")
    bands: tuple[str, ...] | None = Field(
        None, description="input band names in model order (default: all bands of the first "
        "scene, in file order)")
    classes: tuple[ClassSpec, ...] = Field(
        (), description="output classes; label value k is class k (required unless resuming)")
    chip_size: int = Field(256, gt=0, description="side of a training chip, pixels")
    chip_stride: int | None = Field(
        None, gt=0, description="step between candidate chips, pixels (default chip_size/2)")
    min_labelled: float = Field(0.05, ge=0, le=1,
                                description="least labelled fraction for a chip to be used")
    max_chips: int = Field(4000, gt=0, description="most chips held in memory (seeded sample)")
    tile_size: int = Field(512, gt=0, description="prediction tile side stored in the bundle")
    halo: int | None = Field(
        None, ge=0, description="prediction halo stored in the bundle, px (default: the "
        "measured receptive field, at most the architecture's recommended halo)")
    epochs: int = Field(20, gt=0, description="most epochs (early stopping may end sooner)")
    steps_per_epoch: int | None = Field(
        None, gt=0, description="batches per epoch (default: one pass over the train chips)")
    batch_size: int = Field(8, gt=0, description="chips per optimisation step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (cosine-annealed)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    class_weighting: Literal["balanced", "none"] = Field(
        "balanced", description="balanced: cross-entropy weights ∝ 1/sqrt(class frequency)")
    val_fraction: float = Field(0.2, ge=0, lt=1,
                                description="fraction of labelled blocks held out for validation")
    val_block: int = Field(512, gt=0, description="side of the spatial validation blocks, px")
    patience: int = Field(5, gt=0, description="epochs without val mIoU gain before stopping")
    seed: int = Field(0, description="seed of the weights, chip sampling, split and batches")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision on CUDA (CPU always trains in fp32)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: all cores)")
    description: str = Field("", description="stored in the bundle: what this model is")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise ValueError(f"class ids must be 0..{len(ids) - 1} in order, got {ids}")
        check_class_names(c.name for c in self.classes)  # the bundle would refuse them anyway
        if self.chip_stride is not None and self.chip_stride > self.chip_size:
            raise ValueError("chip_stride must not exceed chip_size")
        return self
