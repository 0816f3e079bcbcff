"""Configs: every preset loads; typos and bad values are errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

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


# --- storage: fsspec's non-secret storage_options; credentials only from the environment -------


def _storage(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "storage.yaml"
    path.write_text(text)
    return path


def test_storage_defaults_to_no_options_and_the_environment() -> None:
    cfg = load_config(None)
    assert cfg.storage.options == {}
    opts = cfg.storage.cloud_options(environ={})
    assert "AWS_S3_ENDPOINT" not in opts.gdal and not opts.credentials


def test_storage_options_reach_gdal(tmp_path: Path) -> None:
    cfg = load_config(_storage(tmp_path, "storage:\n  options:\n"
                               "    endpoint_url: http://127.0.0.1:9000\n"
                               "    region: eu-central-1\n    anon: true\n"
                               "    requester_pays: true\n    profile: eo-reader\n"))
    gdal = cfg.storage.cloud_options(environ={}).gdal
    assert gdal["AWS_S3_ENDPOINT"] == "127.0.0.1:9000" and gdal["AWS_HTTPS"] == "NO"
    assert gdal["AWS_VIRTUAL_HOSTING"] == "FALSE" and gdal["AWS_REGION"] == "eu-central-1"
    assert gdal["AWS_NO_SIGN_REQUEST"] == "YES" and gdal["AWS_REQUEST_PAYER"] == "requester"
    assert gdal["AWS_PROFILE"] == "eo-reader"
    assert cfg.model_dump(mode="json")["storage"]["options"]["anon"] is True


def test_storage_options_win_over_the_environment_which_fills_the_rest(tmp_path: Path) -> None:
    env = {"AWS_ENDPOINT_URL": "https://env.example.org", "AWS_REGION": "us-west-2",
           "AWS_NO_SIGN_REQUEST": "YES", "AWS_SECRET_ACCESS_KEY": "env-secret-value"}
    cfg = load_config(_storage(tmp_path, "storage:\n  options:\n"
                               "    endpoint_url: https://cfg.example.org:9000\n"))
    gdal = cfg.storage.cloud_options(environ=env).gdal
    assert gdal["AWS_S3_ENDPOINT"] == "cfg.example.org:9000" and gdal["AWS_HTTPS"] == "YES"
    assert gdal["AWS_REGION"] == "us-west-2" and gdal["AWS_NO_SIGN_REQUEST"] == "YES"
    # anon: false in the config beats AWS_NO_SIGN_REQUEST in the environment
    signed = load_config(None, {"storage": {"options": {"anon": False}}})
    assert "AWS_NO_SIGN_REQUEST" not in signed.storage.cloud_options(environ=env).gdal
    # the secret stays where GDAL reads it itself: never copied into the options
    opts = cfg.storage.cloud_options(environ=env)
    assert not opts.credentials and "env-secret-value" not in repr(opts)
    assert "env-secret-value" not in str(opts.gdal)


@pytest.mark.parametrize(("key", "variable"), [
    ("secret", "AWS_SECRET_ACCESS_KEY"), ("key", "AWS_ACCESS_KEY_ID"),
    ("token", "AWS_SESSION_TOKEN"), ("session_token", "AWS_SESSION_TOKEN"),
    ("account_key", "AZURE_STORAGE_ACCESS_KEY"), ("sas_token", "AZURE_STORAGE_SAS_TOKEN"),
    ("connection_string", "AZURE_STORAGE_CONNECTION_STRING"), ("password", "environment"),
    ("aws_secret_access_key", "environment"), ("client_secret", "environment"),
    ("api_key", "environment"), ("credentials", "environment")])
def test_storage_secrets_are_refused_naming_the_variable(key: str, variable: str,
                                                         tmp_path: Path) -> None:
    path = _storage(tmp_path, f"storage:\n  options:\n    {key}: s3cr3t-VALUE\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert f"storage.options: {key!r} is a secret" in message and variable in message
    assert len(message.splitlines()) == 1
    # the value is in neither the message nor the chained pydantic error
    assert "s3cr3t-VALUE" not in message and "s3cr3t-VALUE" not in str(caught.value.__cause__)


def test_a_secret_of_any_type_is_refused_as_a_secret() -> None:
    with pytest.raises(ConfigError, match="'token' is a secret") as caught:
        load_config(None, {"storage": {"options": {"token": {"access": "s3cr3t-VALUE"}}}})
    assert "s3cr3t-VALUE" not in str(caught.value.__cause__)


@pytest.mark.parametrize(("options", "problem"), [
    ({"endpoint_url": "http://user:s3cr3t-VALUE@minio:9000"}, "endpoint_url: holds credentials"),
    ({"endpoint_url": "https://minio:9000/?X-Amz-Signature=s3cr3t-VALUE"}, "holds credentials"),
    ({"endpoint_url": "minio:9000"}, "not an http(s)://host[:port] URL"),
    ({"anon": "yes"}, "anon: 'yes' is not true or false"),
    ({"anon": 1}, "anon: 1 is not true or false"),
    ({"region": "eu central"}, "not a region name"),
    ({"profile": ""}, "not a non-empty string"),
    ({"project": "a;b"}, "not a name"),
    ({"client_kwargs": {"endpoint_url": "x"}}, "unknown option 'client_kwargs'"),
    ({"use_ssl": False}, "unknown option 'use_ssl'; known: endpoint_url"),
    ({"region": "eu-west-1\nsecret: x"}, "not a region name"),
    ({"endpoint_url": "http://minio:9000/a\nb"}, "control character"),  # urlsplit drops \n
])
def test_storage_options_are_validated(options: dict, problem: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"storage": {"options": options}})
    assert problem in str(caught.value) and "storage.options" in str(caught.value)
    assert "s3cr3t-VALUE" not in str(caught.value)


def test_storage_is_a_mapping_with_known_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="storage.option"):
        load_config(_storage(tmp_path, "storage:\n  option: {anon: true}\n"))
    with pytest.raises(ConfigError, match="storage.options"):
        load_config(_storage(tmp_path, "storage:\n  options: [anon]\n"))


def test_a_secret_put_in_place_after_loading_is_never_dumped_or_shown() -> None:
    """pydantic does not validate a dict changed in place: the dump and repr filter anyway."""
    cfg = load_config(None, {"storage": {"options": {"region": "eu-west-1"}}})
    cfg.storage.options["secret"] = "s3cr3t-VALUE"
    for shown in (repr(cfg), str(cfg), repr(cfg.storage), cfg.model_dump_json(),
                  str(cfg.model_dump()), str(cfg.model_dump(mode="json"))):
        assert "s3cr3t-VALUE" not in shown and "eu-west-1" in shown
    with pytest.raises(ValidationError, match="'secret' is a secret") as caught:
        cfg.storage.options = {"secret": "s3cr3t-VALUE"}  # assigning the whole dict is validated
    assert "s3cr3t-VALUE" not in str(caught.value)
