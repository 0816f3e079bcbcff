"""``geoseg config``: the effective configuration, as a run would use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from geoseg.cli.options import config_options, config_overrides


@click.group()
def config() -> None:
    """Show and check configurations (YAML presets in configs/)."""


@config.command()
@config_options
def show(config_path: Path | None, **_settings: Any) -> None:
    """Print the effective config: defaults, then --config, then the options given.

    \b
    Example:
      geoseg config show -c configs/gpu-node.yaml --block-size 4096
    """
    import yaml

    from geoseg.config import load_config

    cfg = load_config(config_path, config_overrides())
    click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)
