"""Workflow configuration: schema validation with defaults, and movie discovery.

The Snakefile loads ``config/config.yaml`` and calls :func:`validate_config` with
``config/schemas/config.schema.yaml``; the same functions serve tests and scripts.
Missing keys are filled from the schema's ``default`` values, then the whole
configuration is validated; the first problem raises a one-line
:class:`~cryosnake.errors.ConfigError` naming the dotted key, e.g.
``acquisition.pixel_size: -1 must be > 0``.

Example::

    from cryosnake.config import load_config, movie_table
    config = load_config("config/config.yaml", "config/schemas/config.schema.yaml")
    movies = movie_table(config)  # {"movie_0001": "data/demo/movies/movie_0001.mrc", ...}
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import glob
import os
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema

from cryosnake import __version__
from cryosnake.errors import ConfigError, CryosnakeError
from cryosnake.io import MOVIE_SUFFIXES, read_yaml

__all__ = [
    "check_workflow_version",
    "fill_defaults",
    "load_config",
    "load_schema",
    "movie_table",
    "schema_default",
    "schema_path",
    "simulated_gain",
    "validate_config",
]


def load_schema(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON schema written in YAML."""
    schema = read_yaml(path)
    if not isinstance(schema, dict):
        raise ConfigError(f"{path}: not a schema (expected a mapping)")
    return schema


def schema_path() -> Path:
    """The configuration schema of this checkout (config/schemas/config.schema.yaml next
    to the package's src/ folder: an editable install, as ``make install`` makes)."""
    return Path(__file__).resolve().parents[2] / "config" / "schemas" / "config.schema.yaml"


@functools.cache
def _schema() -> dict[str, Any]:
    path = schema_path()
    if not path.is_file():
        raise ConfigError(
            f"{path}: no configuration schema here to take defaults from (cryosnake is not "
            "installed from a checkout); give the option on the command line"
        )
    return load_schema(path)


def schema_default(key: str) -> Any:
    """The schema's ``default`` of dotted configuration ``key`` (e.g.
    ``curate.max_resolution``): the one place that holds the defaults, for the stages'
    options too.

    Raises
    ------
    ConfigError
        No schema is found, or it has no such key or no default for it.
    """
    node: Mapping[str, Any] = _schema()
    for part in key.split("."):
        sub = node.get("properties", {}).get(part)
        if not isinstance(sub, Mapping):
            raise ConfigError(f"{key}: no such key in {schema_path()}")
        node = sub
    if "default" not in node:
        raise ConfigError(f"{key}: no default in {schema_path()}")
    return copy.deepcopy(node["default"])


def fill_defaults(config: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    """Insert the schema's ``default`` for every missing key, recursively, in place."""
    for key, sub in schema.get("properties", {}).items():
        if key not in config and "default" in sub:
            config[key] = copy.deepcopy(sub["default"])
        if isinstance(config.get(key), dict) and "properties" in sub:
            fill_defaults(config[key], sub)
    return config


def _dotted(path: Any) -> str:
    return ".".join(str(p) for p in path)


def _describe(error: jsonschema.ValidationError) -> str:
    """One line naming the dotted key of a schema violation."""
    key = _dotted(error.absolute_path)
    value = error.instance
    kind = error.validator
    expected: Any = error.validator_value
    if kind == "additionalProperties":
        extra = sorted(set(value) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        name = f"{key}.{extra[0]}" if key else extra[0]
        return f"{name}: unknown key (allowed here: {allowed})"
    if kind == "required":
        missing = [k for k in expected if k not in value]
        name = f"{key}.{missing[0]}" if key else missing[0]
        return f"{name}: required key is missing"
    where = key or "(top level)"
    if kind == "type":
        types = expected if isinstance(expected, list) else [expected]
        return f"{where}: expected {' or '.join(types)}, got {value!r}"
    if kind == "enum":
        return f"{where}: {value!r} is not one of {', '.join(map(repr, expected))}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
        return f"{where}: {value!r} must be {op[kind]} {expected}"
    if kind == "minLength":
        return f"{where}: must not be empty"
    return f"{where}: {error.message}"


def validate_config(
    config: dict[str, Any],
    schema: str | os.PathLike[str] | Mapping[str, Any],
    *,
    source: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Fill defaults into ``config`` (in place) and validate it against ``schema``.

    Parameters
    ----------
    config : the configuration mapping (Snakemake's ``config``).
    schema : the schema, or the path of the YAML file that holds it.
    source : file the configuration came from, named in error messages.

    Returns
    -------
    The same ``config`` object, completed with defaults.

    Raises
    ------
    ConfigError
        One line naming the first offending key (errors sorted by key, so the
        message is stable).
    """
    if not isinstance(config, dict):
        raise ConfigError(f"{source or 'config'}: expected a mapping of keys, got {config!r}")
    schema_dict = schema if isinstance(schema, Mapping) else load_schema(schema)
    fill_defaults(config, schema_dict)
    validator_cls = jsonschema.validators.validator_for(schema_dict)
    validator = validator_cls(schema_dict)
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (_dotted(e.absolute_path), e.validator)
    )
    suffix = f" ({source})" if source else ""
    if errors:
        raise ConfigError(_describe(errors[0]) + suffix)
    _check_consistency(config, suffix)
    return config


def load_config(
    path: str | os.PathLike[str], schema: str | os.PathLike[str] | Mapping[str, Any]
) -> dict[str, Any]:
    """Read a YAML configuration file and validate it (see :func:`validate_config`)."""
    config = read_yaml(path)
    if config is None:
        config = {}
    return validate_config(config, schema, source=path)


def _norm(path: str) -> str:
    return os.path.normpath(path)


def simulated_gain(config: Mapping[str, Any]) -> str:
    """Path of the gain reference that ``cryosnake simulate`` writes."""
    return str(PurePosixPath(config["simulate"]["out_dir"]) / "gain.mrc")


def _simulated_movies(config: Mapping[str, Any]) -> dict[str, str]:
    from cryosnake.simulate import make_params

    sim = config["simulate"]
    try:
        params = make_params(sim["preset"], n_movies=sim["n_movies"], movie_format=sim["format"])
    except CryosnakeError as err:
        raise ConfigError(f"simulate: {err}") from err
    out = PurePosixPath(sim["out_dir"]) / "movies"
    return {
        params.movie_stem(i): str(out / f"{params.movie_stem(i)}{params.movie_suffix}")
        for i in range(params.n_movies)
    }


def _check_consistency(config: Mapping[str, Any], suffix: str) -> None:
    """Relations between keys that a schema cannot express."""
    inp = config["input"]
    given = inp["movies"] if isinstance(inp["movies"], list) else [inp["movies"]]
    for movies_path in given:
        if movies_path.startswith("s3://"):
            raise ConfigError(
                "input.movies: S3 input is read through the AWS profile's default storage; "
                f"give the paths relative to the storage prefix, not {movies_path!r}{suffix}"
            )
    if not config["simulate"]["enabled"]:
        return
    if isinstance(inp["movies"], list):
        raise ConfigError(
            f"input.movies: a list of movies cannot be simulated (simulate.enabled is true); "
            f"give the pattern of the simulated movies{suffix}"
        )
    movies = _simulated_movies(config)
    pattern = _norm(inp["movies"])
    odd = [p for p in movies.values() if not fnmatch.fnmatchcase(_norm(p), pattern)]
    if odd:
        raise ConfigError(
            f"input.movies: {inp['movies']!r} does not match the simulated movie {odd[0]!r} "
            f"(simulate.enabled is true){suffix}"
        )
    gain = simulated_gain(config)
    if inp["gain"] is None or _norm(inp["gain"]) != _norm(gain):
        raise ConfigError(
            f"input.gain: must be {gain!r}, the gain of the simulated movies "
            f"(simulate.enabled is true), got {inp['gain']!r}{suffix}"
        )


def movie_table(
    config: Mapping[str, Any], list_files: Callable[[str], list[str]] | None = None
) -> dict[str, str]:
    """Movie name (file name without suffix) -> path, sorted by name.

    With ``simulate.enabled`` the movies are those the simulator will write (they
    need not exist yet); otherwise the files matching ``input.movies``, found with
    ``list_files(pattern)`` (default: a local glob; the workflow lists S3 when its
    default storage is S3), or the files ``input.movies`` lists (as they are).

    Raises
    ------
    ConfigError
        No file matches ``input.movies``, or two files share a name.
    """
    if config["simulate"]["enabled"]:
        return _simulated_movies(config)
    pattern = config["input"]["movies"]
    if isinstance(pattern, list):
        paths = sorted(pattern)
    elif list_files is None:
        paths = sorted(p for p in glob.glob(pattern) if not Path(p).is_dir())
    else:
        paths = sorted(list_files(pattern))
    if not paths:
        raise ConfigError(f"input.movies: no movie file matches {pattern!r}")
    odd = [p for p in paths if Path(p).suffix.lower() not in MOVIE_SUFFIXES]
    if odd:
        raise ConfigError(
            f"input.movies: {pattern!r} matches {odd[0]!r}, which is not a movie "
            f"({', '.join(MOVIE_SUFFIXES)}); narrow the pattern"
        )
    table: dict[str, str] = {}
    for p in paths:
        stem = Path(p).stem
        if stem in table:
            raise ConfigError(
                f"input.movies: {table[stem]!r} and {p!r} share the movie name {stem!r}"
            )
        table[stem] = p
    return table


def check_workflow_version(workflow_version: str, installed: str = __version__) -> None:
    """Stop when the workflow and the cryosnake package that runs its stages differ.

    The rules come from the user's checkout (Snakemake deploys them to every AWS Batch
    job), the stages from the package installed where the job runs (the job image). An
    image built from another version would run stages whose options or outputs the
    rules do not expect. ``CRYOSNAKE_IMAGE_COMMIT`` (set in the images) is named too.
    """
    if installed == workflow_version:
        return
    commit = os.environ.get("CRYOSNAKE_IMAGE_COMMIT")
    image = f" (image of commit {commit})" if commit else ""
    raise ConfigError(
        f"the workflow is cryosnake {workflow_version} but cryosnake {installed} runs its "
        f"stages here{image}: build and push the image of this checkout "
        "(containers/push-ecr.sh STACK) and rerun cryosnake aws profile, or install "
        "this checkout (make install)"
    )
