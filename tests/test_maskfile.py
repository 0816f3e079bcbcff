"""The mask file format (geoseg.maskfile): names, tag, colour table, QGIS style, category names,
and every mask writer going through it (streaming COG, whole-array rules mask, predict)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geoseg.config import PredictConfig
from geoseg.errors import OutputExistsError, SceneError
from geoseg.maskfile import (
    CLASSES_TAG,
    NODATA,
    aux_path,
    category_names_xml,
    class_colormap,
    classes_from_colormap,
    classes_tag,
    output_paths,
    paletted_qml,
    parse_classes,
    read_classes,
    style_path,
    write_mask,
)
from geoseg.models.bundle import ClassSpec
from geoseg.tiling import Window
from geoseg.writers import RasterSpec, StreamingCOGWriter

#: Names that break naive XML: markup, entities, both quotes, a control character, non-ASCII.
HOSTILE = ("water", 'a<b> & "c" \'d\'', "]]><!--", "tab\tbell\x07", "Gewässer · 水")
CLASSES = tuple(ClassSpec(id=i, name=n, color=(40 * i, 255 - 40 * i, 7 * i))
                for i, n in enumerate(HOSTILE))
TRANSFORM = from_origin(500_000.0, 4_600_000.0, 10.0, 10.0)


def expected_name(name: str) -> str:
    """What survives XML: control characters XML 1.0 cannot hold become U+FFFD."""
    return name.replace("\x07", "\ufffd")


def test_sidecar_names_keep_every_dot_of_the_base_name() -> None:
    paths = output_paths(Path("/o/T18.v2.tif"), confidence=True, probabilities=True)
    assert {k: p.name for k, p in paths.items()} == {
        "mask": "T18.v2.tif", "mask-style": "T18.v2.qml", "mask-categories": "T18.v2.tif.aux.xml",
        "confidence": "T18.v2.confidence.tif", "probabilities": "T18.v2.probabilities.tif"}
    assert list(output_paths(Path("m.tif"))) == ["mask", "mask-style", "mask-categories"]


def test_sidecars_of_the_longest_scene_name_fit_a_file_name(tmp_path) -> None:
    from geoseg.batch.discover import NAME_BYTES
    from geoseg.maskfile import write_sidecars

    mask = tmp_path / ("é" * (NAME_BYTES // 2) + ".tif")  # temporaries: name + 38 bytes
    assert sorted(write_sidecars(mask, CLASSES)) == ["mask-categories", "mask-style"]
    assert len(list(tmp_path.iterdir())) == 2


def test_colour_table_has_the_classes_only() -> None:
    cmap = class_colormap(CLASSES[:3])
    assert cmap == {0: (0, 255, 0, 255), 1: (40, 215, 7, 255), 2: (80, 175, 14, 255)}
    assert NODATA not in cmap


def test_tag_round_trip_and_one_failure_rule() -> None:
    assert parse_classes(classes_tag(CLASSES), "m.tif") == CLASSES
    assert json.loads(classes_tag(CLASSES[:1])) == [{"id": 0, "name": "water",
                                                      "color": [0, 255, 0]}]
    for bad in ("not json", "{}", '[{"id": 0}]', '[{"id": 255, "name": "x", "color": [1,2,3]}]',
                '[{"id": 0, "name": " ", "color": [1,2,3]}]',
                '[{"id": 0, "name": "x", "color": [1,2,300]}]', "[3]"):
        with pytest.raises(SceneError, match=f"m.tif: tag {CLASSES_TAG} .*rewrite it or delete"):
            parse_classes(bad, "m.tif")


def test_classes_from_a_colour_table_skip_padding_and_nodata() -> None:
    cmap = {0: (9, 9, 9, 255), 1: (0, 0, 0, 255), 2: (1, 2, 3, 255), 255: (0, 0, 0, 0)}
    assert [(c.id, c.name) for c in classes_from_colormap(cmap)] == [(0, "class_0"),
                                                                   (2, "class_2")]
    assert [c.id for c in classes_from_colormap(cmap, nodata=0)] == [2]


def test_qml_is_a_paletted_renderer_labelled_with_the_class_names() -> None:
    root = ET.fromstring(paletted_qml(CLASSES))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    assert renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in entries] == [
        (str(c.id), expected_name(c.name), "#{:02x}{:02x}{:02x}".format(*c.color))
        for c in CLASSES]


def test_category_names_are_indexed_by_pixel_value() -> None:
    gappy = (CLASSES[0], CLASSES[3].model_copy(update={"id": 3}))
    root = ET.fromstring(category_names_xml(gappy))
    cats = [c.text or "" for c in root.findall("PAMRasterBand/CategoryNames/Category")]
    assert cats == ["water", "", "", expected_name(HOSTILE[3])]


def write_cog(path: Path, classes=CLASSES, **spec) -> np.ndarray:
    data = (np.arange(300 * 400).reshape(1, 300, 400) % len(classes)).astype(np.uint8)
    data[:, :40, :50] = NODATA
    s = RasterSpec(CRS.from_epsg(32633).to_wkt(), tuple(TRANSFORM)[:6], 300, 400,
                   classes=classes, descriptions=("class",), **spec)
    with StreamingCOGWriter(path, s) as w:
        w.write(Window(0, 0, 300, 400), data)
        w.commit()
    return data


def test_streaming_writer_adds_tag_colours_and_sidecars_and_keeps_the_cog(tmp_path) -> None:
    from rio_cogeo.cogeo import cog_validate

    mask = tmp_path / "m.tif"
    data = write_cog(mask, tags={"GEOSEG_SCENE": "s"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.qml", "m.tif", "m.tif.aux.xml"]
    before = mask.read_bytes()
    with rasterio.open(mask) as src:
        assert np.array_equal(src.read(), data)
        assert read_classes(src) == CLASSES
        assert src.tags()["GEOSEG_SCENE"] == "s"
        cmap = src.colormap(1)
        assert all(cmap[c.id] == (*c.color, 255) for c in CLASSES)
        assert cmap[NODATA][3] == 0  # nodata stays nodata: transparent in the palette
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    valid, errors, _ = cog_validate(str(mask))
    assert valid, errors
    assert mask.read_bytes() == before  # reading with a PAM sidecar leaves the COG alone
    assert style_path(mask).read_text(encoding="utf-8") == paletted_qml(CLASSES)
    assert aux_path(mask).read_text(encoding="utf-8") == category_names_xml(CLASSES)


def test_rasters_without_classes_get_no_sidecars(tmp_path) -> None:
    s = RasterSpec(CRS.from_epsg(32633).to_wkt(), tuple(TRANSFORM)[:6], 10, 10)
    with StreamingCOGWriter(tmp_path / "c.tif", s) as w:
        w.write(Window(0, 0, 10, 10), np.zeros((1, 10, 10), np.uint8))
        w.commit()
    assert [p.name for p in tmp_path.iterdir()] == ["c.tif"]


def test_a_failed_write_leaves_nothing(tmp_path) -> None:
    with pytest.raises(RuntimeError), StreamingCOGWriter(
            tmp_path / "m.tif", RasterSpec(CRS.from_epsg(32633).to_wkt(),
                                           tuple(TRANSFORM)[:6], 10, 10, classes=CLASSES)):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_whole_array_mask_writer(tmp_path) -> None:
    labels = np.array([[0, 1], [NODATA, 2]], np.uint8)
    path = write_mask(tmp_path / "rules.tif", labels, "EPSG:32618", TRANSFORM, CLASSES[:3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rules.qml", "rules.tif",
                                                          "rules.tif.aux.xml"]
    with rasterio.open(path) as src:
        assert np.array_equal(src.read(1), labels) and src.nodata == NODATA
        assert read_classes(src) == CLASSES[:3]
        assert src.block_shapes == [(256, 256)] and src.colormap(1)[2] == (80, 175, 14, 255)


def test_rules_labels_are_written_as_a_mask(tmp_path) -> None:
    from geoseg.rules import RULE_CLASSES, write_rule_labels

    profile = {"crs": CRS.from_epsg(32618), "transform": TRANSFORM}
    path = write_rule_labels(tmp_path / "r.tif", np.zeros((3, 4), np.uint8), profile)
    with rasterio.open(path) as src:
        assert [c.name for c in read_classes(src)] == [n for n, _ in RULE_CLASSES]
    assert style_path(path).exists() and aux_path(path).exists()


def test_predict_writes_the_sidecars_and_refuses_to_replace_them(make_scene, make_bundle,
                                                                  tmp_path) -> None:
    from geoseg.pipeline import predict_scene

    scene, bundle = make_scene(height=64, width=96), make_bundle()
    out = tmp_path / "out" / "mask.tif"
    result = predict_scene(scene, bundle, out, PredictConfig(confidence=True))
    assert {k: p.name for k, p in result.outputs.items()} == {
        "mask": "mask.tif", "mask-style": "mask.qml", "mask-categories": "mask.tif.aux.xml",
        "confidence": "mask.confidence.tif"}
    assert all(p.exists() for p in result.outputs.values())
    labels = [e.get("label") for e in ET.parse(style_path(out)).iter("paletteEntry")]
    assert labels == [f"class{i}" for i in range(5)]
    out.unlink()
    with pytest.raises(OutputExistsError, match="mask.qml"):
        predict_scene(scene, bundle, out, PredictConfig())
