"""``geoseg model``: create and inspect model bundles."""

from __future__ import annotations

import json
from pathlib import Path

import click

from geoseg.cli.bundle_args import (
    bundle_bands,
    depth_kwargs,
    parse_classes,
    parse_encoding,
    split_list,
)
from geoseg.cli.options import architecture_options, bundle_input_options
from geoseg.cli.render import console, terminal_safe


@click.group()
def model() -> None:
    """Model bundles (weights + metadata, one safetensors file): create, import, info, export."""


@model.command("init")
@architecture_options(encoder="resnet34")
@bundle_input_options
@click.option("--tile-size", default=512, show_default=True, help="Model input tile side, px.")
@click.option("--halo", type=int, help="Context px per tile side [recommended for the arch].")
@click.option("--encoder-depth", type=int,
              help="Encoder stages (3-5); fewer = smaller receptive field.")
@click.option("--seed", default=0, show_default=True, help="Random seed of the weights.")
@click.option("--input-encoding", metavar="SCALE,OFFSET",
              help="What the model's input DN mean: physical = DN × SCALE + OFFSET "
                   "[--stats-from's declared encoding, else none: the values as stored].")
@click.option("--description", default="", help="What this model is (stored in the bundle).")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Bundle to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
def init(arch: str, encoder: str, bands: str, classes: str, input_dtype: str,
         stats_from: Path | None, mean: str | None, std: str | None, tile_size: int,
         halo: int | None, encoder_depth: int | None, seed: int, input_encoding: str | None,
         description: str, out: Path, overwrite: bool) -> None:
    """Write a randomly initialised (untrained) bundle, e.g. to try the pipeline.

    Normalization statistics come from --stats-from SCENE (recommended) or --mean/--std.

    \b
    Example:
      geoseg model init --arch unet --encoder resnet34 --bands B02,B03,B04,B08 \\
          --classes water,trees,crops,built --stats-from scene.tif -o model.safetensors
    """
    from geoseg.errors import OutputExistsError
    from geoseg.models.bundle import init_bundle
    from geoseg.models.registry import recommended_halo

    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists already; pass --overwrite to replace it")
    names = split_list(bands, "--bands")
    classes_ = parse_classes(classes)
    band_specs = bundle_bands(names, input_dtype, stats_from, mean, std,
                             encoding=parse_encoding(input_encoding))
    meta = init_bundle(
        out,
        arch=arch,
        encoder=encoder,
        bands=band_specs,
        input_dtype=input_dtype,  # type: ignore[arg-type]
        classes=classes_,
        tile_size=tile_size,
        halo=recommended_halo(arch) if halo is None else halo,
        arch_kwargs=depth_kwargs(arch, encoder_depth),
        seed=seed,
        description=description,
    )
    console.print(f"[green]wrote[/] {terminal_safe(out)}: {meta.arch}/"
                  f"{terminal_safe(meta.encoder)}, {len(meta.bands)} bands, "
                  f"{len(meta.classes)} classes (untrained)")


@model.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@bundle_input_options
@click.option("--scale", type=click.FloatRange(min=0, min_open=True),
              help="The model was trained on pixels × SCALE (e.g. 0.0001 for DN/10000); "
                   "--mean/--std are in those scaled units (none: 0 and 1). Folded into the "
                   "stored mean/std, (x·scale − m)/s = (x − m/scale)/(s/scale): the bundle "
                   "holds plain statistics in the scene's units (no format change).")
@click.option("--input-encoding", metavar="SCALE,OFFSET",
              help="What the DN the model was trained on mean: physical = DN × SCALE + OFFSET "
                   "(GDAL/STAC raster:bands), e.g. 0.0001,0 for Sentinel-2 L2A before "
                   "baseline 04.00; scenes declaring another encoding are converted to it. "
                   "[none: the values as stored; scenes declaring an encoding are refused]")
@click.option("--arch", help="smp architecture, where the source does not say (a state dict).")
@click.option("--encoder", help="smp encoder, where the source does not say.")
@click.option("--arch-kwargs", help="Further smp constructor arguments as JSON, where the "
              """source does not say, e.g. '{"encoder_depth": 4, "decoder_channels": """
              """[128, 64, 32, 16]}'.""")
@click.option("--prefix", help="Key prefix of the model's weights in a checkpoint, e.g. "
              "'model.' [detected]; '' for none.")
@click.option("--tile-size", default=512, show_default=True, help="Model input tile side, px.")
@click.option("--halo", type=int, help="Context px per tile side [recommended for the arch].")
@click.option("--description", default="", help="What this model is (stored in the bundle).")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path),
              help="Bundle to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle.")
def import_(source: Path, bands: str, classes: str, input_dtype: str, stats_from: Path | None,
            mean: str | None, std: str | None, scale: float | None, input_encoding: str | None,
            arch: str | None,
            encoder: str | None, arch_kwargs: str | None, prefix: str | None, tile_size: int,
            halo: int | None, description: str, out: Path, overwrite: bool) -> None:
    """Import an smp model trained elsewhere as a bundle, and prove it gives the same logits.

    \b
    SOURCE is one of:
      a state dict (.pth .pt .bin .safetensors) of an smp model: give --arch, --encoder
      an smp save_pretrained / Hugging Face-style folder (config.json + model.safetensors)
      a Lightning .ckpt: TorchGeo's SemanticSegmentationTask, or any LightningModule holding
      an smp model (give --arch/--encoder; the key prefix is detected, or set --prefix)

    Weights files are read with torch.load(weights_only=True) or safetensors: a whole pickled
    model (torch.save(model)) is refused, unread; save model.state_dict() instead. The bundle's
    logits must match the source model's within 1e-5 on a random batch, or nothing is written;
    the bundle records the source file, its sha256 and kind (see `geoseg model info`).

    \b
    Examples:
      geoseg model import unet.pth --arch unet --encoder resnet34 --bands B02,B03,B04,B08 \\
          --classes water,trees,crops,built --mean 0.05,0.07,0.06,0.25 \\
          --std 0.03,0.03,0.04,0.1 --scale 0.0001 -o unet.safetensors
      geoseg model import task.ckpt --bands B02,B03,B04,B08 --classes water,land,built \\
          --stats-from scene.tif -o unet.safetensors
    """
    from geoseg.errors import ConfigError
    from geoseg.models.importer import import_model

    kwargs = None
    example = 'e.g. \'{"encoder_depth": 4}\''
    if arch_kwargs is not None:
        try:
            kwargs = json.loads(arch_kwargs)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--arch-kwargs: not JSON ({exc}); {example}") from None
        if not isinstance(kwargs, dict):
            raise ConfigError(f"--arch-kwargs: give a JSON object, {example}")
    names = split_list(bands, "--bands")
    result = import_model(
        source, out, bands=bundle_bands(names, input_dtype, stats_from, mean, std, scale,
                                       parse_encoding(input_encoding)),
        classes=parse_classes(classes), input_dtype=input_dtype,  # type: ignore[arg-type]
        tile_size=tile_size, halo=halo, arch=arch, encoder=encoder, arch_kwargs=kwargs,
        prefix=prefix, description=description, overwrite=overwrite)
    meta, described, safe = result.meta, result.described, terminal_safe
    origin = meta.training["source"]
    prefix_note = f", key prefix {safe(repr(origin['prefix']))}" if origin["prefix"] else ""
    kwargs = f" {safe(meta.arch_kwargs)}" if meta.arch_kwargs else ""
    console.print(f"read {safe(source)} ({origin['kind']}{prefix_note}): {meta.arch}/"
                  f"{safe(meta.encoder)}{kwargs} from {safe(described.origin)}; "
                  f"{len(result.keys.matched)} tensors", soft_wrap=True)
    if described.ignored:
        console.print(f"not smp arguments, ignored: {safe(', '.join(described.ignored))}",
                      soft_wrap=True)
    console.print("logits match the source: max |Δ| {:.1e} on a {} batch".format(
        result.max_abs_diff, "×".join(map(str, result.batch_shape))))
    console.print(f"[green]wrote[/] {safe(out)}: {len(meta.bands)} bands, "
                  f"{len(meta.classes)} classes, tile {meta.tile_size} px, halo {meta.halo} px",
                  soft_wrap=True)


@model.command("info")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--receptive-field", is_flag=True,
              help="Measure the receptive field and the halo that makes masks tiling-independent.")
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(bundle: Path, receptive_field: bool, as_json: bool) -> None:
    """Show what a bundle holds: architecture, bands and normalization, classes, tiling."""
    from rich.table import Table

    from geoseg.models.bundle import load_bundle
    from geoseg.models.registry import NON_LOCAL_ARCHITECTURES

    loaded = load_bundle(bundle)
    meta = loaded.meta
    if as_json:
        click.echo(json.dumps(meta.model_dump(mode="json") | {"sha256": loaded.sha256}, indent=2))
        return
    safe = terminal_safe  # every string from the bundle or the user: no markup, no escapes
    console.print(f"[bold]{safe(bundle)}[/]  sha256 {loaded.sha256[:16]}…")
    console.print(f"{meta.arch} / {safe(meta.encoder)} {safe(meta.arch_kwargs or '')}  input "
                  f"{meta.input_dtype}, tile {meta.tile_size} px, halo {meta.halo} px")
    if meta.description:
        console.print(safe(meta.description, newlines=True))
    origin = meta.training.get("source") if meta.training.get("init") == "import" else None
    if isinstance(origin, dict):  # provenance of `geoseg model import` (any JSON: all made safe)
        diff = meta.training.get("logits_max_abs_diff")
        figure = (f"; logits within {diff:.1e} of the source's" if isinstance(diff, float)
                  else "")
        prefix = f", key prefix {safe(repr(origin['prefix']))}" if origin.get("prefix") else ""
        console.print(f"imported from {safe(origin.get('file'))} ({safe(origin.get('kind'))}"
                      f"{prefix}, sha256 {safe(str(origin.get('sha256', ''))[:16])}…){figure}",
                      soft_wrap=True)
    bands = Table("band", "mean", "std", "input encoding", title="bands (model order)")
    for b in meta.bands:
        bands.add_row(safe(b.name), f"{b.mean:.4g}", f"{b.std:.4g}",
                      b.encoding.text() if b.encoding else "none (values as stored)")
    classes = Table("id", "name", "colour", title="classes")
    for c in meta.classes:
        hexa = "#{:02x}{:02x}{:02x}".format(*c.color)
        classes.add_row(str(c.id), safe(c.name), f"[{hexa}]██[/] {hexa}")
    console.print(bands, classes)
    if receptive_field:
        from geoseg.models.receptive import receptive_field_radius
        from geoseg.tiling import ceil_to

        model = loaded.build()
        align = loaded.align
        probe = ceil_to(max(512, 4 * meta.halo), align)
        radius = receptive_field_radius(model, len(meta.bands), probe)
        at_least = "≥ " if radius >= probe // 2 else ""
        console.print(f"receptive field radius {at_least}{radius} px → halo for exact tiling "
                      f"independence: {at_least}{ceil_to(radius, align)} px (stride {align})")
        if meta.arch in NON_LOCAL_ARCHITECTURES:
            console.print(f"note: {meta.arch} pools over the whole tile; keep the tile size fixed")


@model.command("set-encoding")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--scale", type=float, help="Physical units per DN (> 0), e.g. 0.0001.")
@click.option("--offset", type=float, default=0.0, show_default=True,
              help="Physical value of DN 0, e.g. -0.1 for Sentinel-2 L2A since baseline 04.00.")
@click.option("--none", "clear", is_flag=True,
              help="Record no encoding (the values as stored in the file), as before.")
@click.option("--bands", "only", help="Only these bands (comma list) [every band].")
@click.option("-o", "--out", type=click.Path(path_type=Path),
              help="Bundle to write [BUNDLE itself, replaced atomically].")
def set_encoding(bundle: Path, scale: float | None, offset: float, clear: bool,
                 only: str | None, out: Path | None) -> None:
    """Record what the values a bundle's model was made with mean: physical = DN × SCALE +
    OFFSET (the GDAL / STAC raster:bands convention). Weights and statistics are unchanged.

    Scenes whose bands declare another encoding are then converted on read (folded into the
    normalization); without one, a scene that declares a non-identity encoding is refused.

    \b
    Example (trained on Sentinel-2 L2A DN before baseline 04.00, reflectance = DN / 10000):
      geoseg model set-encoding model.safetensors --scale 0.0001 --offset 0
    """
    from geoseg.errors import ConfigError
    from geoseg.models.bundle import load_bundle, save_bundle
    from geoseg.models.meta import with_encoding

    if clear == (scale is not None):
        raise ConfigError("give --scale (and --offset), or --none")
    encoding = None if clear else parse_encoding(f"{scale!r},{offset!r}", "--scale/--offset")
    loaded = load_bundle(bundle)
    try:
        meta = with_encoding(loaded.meta, encoding, split_list(only, "--bands") if only else None)
    except ValueError as exc:
        raise ConfigError(f"--bands: {exc}") from None
    target = save_bundle(loaded.build(), meta, out or bundle)
    shown = encoding.text() if encoding else "none"
    console.print(f"[green]wrote[/] {terminal_safe(target)}: input encoding {shown} for "
                  f"{terminal_safe(only or 'every band')}", soft_wrap=True)


@model.command("export")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--onnx", "onnx_out", required=True, type=click.Path(path_type=Path),
              help="ONNX file to write (one file, weights included).")
@click.option("--opset", type=click.IntRange(7), help="ONNX opset [torch's default].")
@click.option("--deepness", is_flag=True,
              help="For the QGIS plugin Deepness: input fixed to the tile size, output "
                   "probabilities (softmax).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def export(bundle: Path, onnx_out: Path, opset: int | None, deepness: bool,
           overwrite: bool) -> None:
    """Export a bundle to ONNX with its metadata, checked against torch with onnxruntime.

    The ONNX model takes the normalized bands, float32 (N, C, H, W), each band
    (x - mean) / std with the bundle's statistics, H and W any multiples of the model's
    size divisor; it returns logits (N, K, H, W): class = argmax over K. Bands, statistics,
    classes and colours, tile size, halo and size divisor are in the file's metadata
    (docs/export.md). --deepness fixes H = W to the tile size and outputs probabilities,
    for the QGIS plugin Deepness. Needs pip install "geoseg[onnx]".

    \b
    Examples:
      geoseg model export model.safetensors --onnx model.onnx
      geoseg model export model.safetensors --onnx model-qgis.onnx --deepness
    """
    from geoseg.models.export import MIN_AGREEMENT, export_onnx

    done = export_onnx(bundle, onnx_out, opset=opset, overwrite=overwrite, deepness=deepness)
    sizes = (f"input {done.input_size[0]}x{done.input_size[1]} px" if done.input_size
             else f"H and W multiples of {done.size_divisor} px")
    console.print(f"[green]wrote[/] {terminal_safe(done.path)}: "
                  f"{done.size_bytes / 1e6:.1f} MB, opset {done.opset}, {sizes}, output "
                  f"{done.output}", soft_wrap=True)
    check = done.agreement
    if check is None:
        console.print("[yellow]not checked[/] against torch: onnxruntime is not installed "
                      "(pip install onnxruntime)")
    else:
        n, c, h, w = check.shape
        console.print(f"checked against torch on a random {h}x{w} tile: same class on "
                      f"{100 * check.fraction:.4f} % of pixels (≥ {100 * MIN_AGREEMENT:.2f} % "
                      f"needed), max |{done.output} difference| {check.max_abs_diff:.2g}",
                      soft_wrap=True)
