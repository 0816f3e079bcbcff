"""The ``geoseg`` command line: thin click commands over the library, rendered with rich."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

import click

__all__ = ["OWN_PROCESS", "main"]

#: ``ctx.obj`` key set when the command line is this process's own ``sys.argv``: only then may
#: a command re-execute the process (:mod:`geoseg.cli.allocator`).
OWN_PROCESS = "own_process"

#: command name → "module:attribute" (loaded lazily so `geoseg --help` is fast).
_COMMANDS = {
    "predict": "geoseg.cli.predict:predict",
    "model": "geoseg.cli.model:model",
    "vectorize": "geoseg.cli.vectorize:vectorize",
    "run": "geoseg.cli.run:run",
    "inspect": "geoseg.cli.inspect:inspect",
    "config": "geoseg.cli.config:config",
    "workflow": "geoseg.cli.workflow:workflow",
    "train": "geoseg.cli.train:train",
    "evaluate": "geoseg.cli.evaluate:evaluate",
}


class _Group(click.Group):
    """Loads commands lazily and turns geoseg errors into one line and exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name in _COMMANDS if self._load(name) is not None)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = _COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        except ModuleNotFoundError as exc:
            if exc.name == module:
                return None
            raise

    def main(self, args: Any = None, *rest: Any, **extra: Any) -> Any:
        if args is None:  # this process's own command line (not a test runner's argument list)
            extra.setdefault("obj", {})[OWN_PROCESS] = True
        return super().main(args, *rest, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        from geoseg.errors import GeoSegError

        try:
            return super().invoke(ctx)
        except (GeoSegError, OSError) as exc:  # bad input, or what the system refused
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            from geoseg.cli.render import console, terminal_safe

            console.print(f"[red]error:[/] {terminal_safe(exc)}", highlight=False, soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details; full tracebacks.")
@click.version_option(package_name="geoseg")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """geoseg: huge satellite scenes to seamless land-cover masks and polygons.

    \b
    Typical use:
      geoseg model init --arch unet --encoder resnet34 --bands B02,B03,B04,B08 \\
          --classes water,trees,crops,built --dtype uint16 --out model.safetensors
      geoseg predict scene.tif --model model.safetensors --out mask.tif
      geoseg vectorize mask.tif --out landcover.gpkg
    """
    if not verbose:  # distributed configures its loggers from this when first imported
        # "critical": a task that raised is logged by its worker with Dask's traceback text;
        # the error reaches the client, which reports it in one line (-v shows everything)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("distributed").setLevel(logging.INFO if verbose else logging.ERROR)
