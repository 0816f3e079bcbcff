"""Training settings: one pydantic model at the boundary (CLI options, or Python callers)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geoseg.models.bundle import ClassSpec, check_class_names

__all__ = ["DEFAULT_STEPS", "DEFAULT_STEPS_PER_EPOCH", "TrainConfig"]

#: Default training length, optimizer steps (measured: see docs/training.md).
DEFAULT_STEPS = 600
#: Default validation interval, optimizer steps.
DEFAULT_STEPS_PER_EPOCH = 30


class TrainConfig(BaseModel):
    """How a model is built and trained. Ignored when resuming: arch, encoder, arch_kwargs,
    bands, classes, tile_size and halo (they come from the bundle); when starting from a
    bundle (``init``), all of them but classes."""

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
        None, gt=0, description="step between validation chips inside a held-out block larger "
        "than a chip, pixels (default chip_size); training chips lie at random positions")
    min_labelled: float = Field(0.05, ge=0, le=1,
                                description="least labelled fraction of a training chip (a "
                                "random chip is redrawn, up to 10 times, until it has it) and "
                                "of a validation chip")
    max_chips: int | None = Field(
        None, gt=0, description="deprecated, no effect: training reads the labelled area once "
        "and draws chips from it; kept so old configurations still load (a warning says so)")
    tile_size: int = Field(512, gt=0, description="prediction tile side stored in the bundle")
    halo: int | None = Field(
        None, ge=0, description="prediction halo stored in the bundle, px (default: the "
        "measured receptive field, at most the architecture's recommended halo)")
    steps: int | None = Field(
        None, gt=0, description=f"training length in optimizer steps of batch_size random "
        f"chips (default {DEFAULT_STEPS}, or epochs x steps_per_epoch when epochs is given)")
    steps_per_epoch: int = Field(
        DEFAULT_STEPS_PER_EPOCH, gt=0,
        description="optimizer steps between validations (an epoch); patience counts epochs")
    epochs: int | None = Field(
        None, gt=0, description="another way to give the length: epochs x steps_per_epoch "
        "steps (give steps or epochs, not both); early stopping may end sooner")
    batch_size: int = Field(8, gt=0, description="chips per optimisation step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (cosine-annealed)")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    class_weighting: Literal["balanced", "none"] = Field(
        "balanced", description="balanced: cross-entropy weights ∝ 1/sqrt(class frequency)")
    val_fraction: float = Field(0.2, ge=0, lt=1,
                                description="fraction of labelled blocks held out for validation")
    val_block: int = Field(
        512, gt=0, description="largest side of the spatial validation blocks, px; halved "
        "(down to 64) until the labelled area spans enough blocks for a split")
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
        if self.steps is not None and self.epochs is not None and (
                self.steps != self.epochs * self.steps_per_epoch):
            raise ValueError(f"give steps ({self.steps}) or epochs ({self.epochs} x "
                             f"{self.steps_per_epoch} steps), not both")
        return self

    @property
    def total_steps(self) -> int:
        """Training length, optimizer steps: ``steps``, else ``epochs x steps_per_epoch``,
        else :data:`DEFAULT_STEPS`."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * self.steps_per_epoch
        return DEFAULT_STEPS
