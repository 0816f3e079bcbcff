"""Configs: every preset loads; typos and bad values are errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from geoseg.config import load_config
from geoseg.errors import ConfigError

PRESETS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_presets() -> None:
    assert len(PRESETS) >= 3


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_loads(path: Path) -> None:
    load_config(path)


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    cfg = load_config(PRESETS[0], {"predict": {"block_size": 999, "halo": None}})
    assert cfg.predict.block_size == 999 and cfg.predict.halo is None


def test_typo_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("predict:\n  tile_sise: 512\n")
    with pytest.raises(ConfigError, match=r"predict\.tile_sise: Extra inputs"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"predict\.stitch"):
        load_config(None, {"predict": {"stitch": "average"}})
