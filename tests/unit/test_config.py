"""cryosnake.config: defaults, one-line errors naming the key, movie discovery."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from cryosnake.config import fill_defaults, load_config, load_schema, movie_table, validate_config
from cryosnake.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = load_schema(ROOT / "config" / "schemas" / "config.schema.yaml")


def test_shipped_config_is_valid_and_equals_the_defaults() -> None:
    config = load_config(ROOT / "config" / "config.yaml", SCHEMA)
    assert config == validate_config({}, SCHEMA)
    assert config["acquisition"] == {
        "pixel_size": 1.5,
        "voltage": 300,
        "cs": 2.7,
        "amplitude_contrast": 0.07,
        "dose_per_frame": 1.0,
    }


def _keys(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, sub in schema.get("properties", {}).items():
        out.append((prefix + name, sub))
        out += _keys(sub, f"{prefix}{name}.")
    return out


@pytest.mark.parametrize(("key", "sub"), _keys(SCHEMA), ids=[k for k, _ in _keys(SCHEMA)])
def test_every_key_has_a_description_and_a_default(key: str, sub: dict[str, Any]) -> None:
    assert len(sub.get("description", "")) > 10, key
    assert "default" in sub, key


def test_defaults_fill_only_missing_keys() -> None:
    config = {"acquisition": {"pixel_size": 0.83}, "simulate": {"enabled": False}}
    fill_defaults(config, SCHEMA)
    assert config["acquisition"]["pixel_size"] == 0.83
    assert config["acquisition"]["voltage"] == 300
    assert config["simulate"]["enabled"] is False
    assert config["simulate"]["preset"] == "demo"
    assert config["results"] == "results"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"acquisition": {"pixel_size": 0}}, "acquisition.pixel_size: 0 must be > 0"),
        ({"acquisition": {"voltage": 5000}}, "acquisition.voltage: 5000 must be <= 1000"),
        ({"acquisition": {"cs": "2.7mm"}}, "acquisition.cs: expected number, got '2.7mm'"),
        ({"simulate": {"n_movies": 0}}, "simulate.n_movies: 0 must be >= 1"),
        ({"simulate": {"enabled": "yes"}}, "simulate.enabled: expected boolean"),
        ({"simulate": {"format": "eer"}}, "simulate.format: 'eer' is not one of"),
        ({"input": {"gain_rotate": 4}}, "input.gain_rotate: 4 is not one of 0, 1, 2, 3, 'auto'"),
        ({"acquisition": {"pixelsize": 1.0}}, "acquisition.pixelsize: unknown key"),
        ({"motioncorr": {}}, "motioncorr: unknown key"),
        ({"results": ""}, "results: must not be empty"),
        ({"input": {"gain": None}}, "input.gain: must be 'data/demo/gain.mrc'"),
        ({"input": {"movies": "data/demo/*.tif"}}, "input.movies: 'data/demo/*.tif' does not"),
        ({"input": {"movies": "s3://bucket/raw/*.tif"}}, "input.movies: S3 input is read"),
    ],
)
def test_errors_are_one_line_and_name_the_key(change: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {}
    for section, value in change.items():
        config[section] = copy.deepcopy(value)
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA, source="my.yaml")
    text = str(err.value)
    assert text.startswith(message), text
    assert text.endswith("(my.yaml)")
    assert "\n" not in text


def test_a_config_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path, SCHEMA)
    path.write_text("acquisition: [unclosed\n")
    with pytest.raises(Exception, match=r"c\.yaml: not valid YAML at line"):
        load_config(path, SCHEMA)


def test_simulated_movie_names_follow_the_simulator() -> None:
    config = validate_config(
        {
            "simulate": {"n_movies": 3, "format": "tiff", "out_dir": "x"},
            "input": {"movies": "x/movies/*.tif", "gain": "x/gain.mrc"},
        },
        SCHEMA,
    )
    assert movie_table(config) == {
        "movie_0001": "x/movies/movie_0001.tif",
        "movie_0002": "x/movies/movie_0002.tif",
        "movie_0003": "x/movies/movie_0003.tif",
    }


def test_existing_movies_sorted_and_names_unique(tmp_path: Path) -> None:
    for sub, name in (("a", "m2.mrc"), ("a", "m1.tiff"), ("b", "m1.mrc")):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / name).write_bytes(b"")
    base = {"simulate": {"enabled": False}, "input": {"gain": None}}
    config = validate_config({**base, "input": {"movies": str(tmp_path / "a" / "*")}}, SCHEMA)
    assert movie_table(config) == {
        "m1": str(tmp_path / "a" / "m1.tiff"),
        "m2": str(tmp_path / "a" / "m2.mrc"),
    }
    config["input"]["movies"] = str(tmp_path / "*" / "m1.*")
    with pytest.raises(ConfigError, match="share the movie name 'm1'"):
        movie_table(config)


def test_workflow_version_is_the_package_version() -> None:
    """rules/common.smk's WORKFLOW_VERSION is pyproject.toml's version."""
    root = Path(__file__).resolve().parents[2]
    rules = (root / "rules" / "common.smk").read_text()
    pyproject = (root / "pyproject.toml").read_text()
    workflow = re.search(r'^WORKFLOW_VERSION = "([^"]+)"$', rules, re.M)
    package = re.search(r'^version = "([^"]+)"$', pyproject, re.M)
    assert workflow and package and workflow.group(1) == package.group(1)


def test_a_job_image_of_another_version_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    from cryosnake.config import check_workflow_version

    check_workflow_version("0.1.0", installed="0.1.0")
    monkeypatch.setenv("CRYOSNAKE_IMAGE_COMMIT", "0123456789ab")
    with pytest.raises(ConfigError) as err:
        check_workflow_version("0.2.0", installed="0.1.0")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "the workflow is cryosnake 0.2.0 but cryosnake 0.1.0 runs its stages here "
        "(image of commit 0123456789ab): build and push the image of this checkout"
    )
