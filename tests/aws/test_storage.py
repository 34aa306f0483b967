"""Movie discovery in S3, workflow files read back, and the stage errors of failed jobs."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from cryosnake.aws.inventory import (
    list_storage,
    points_elsewhere,
    prime_inventory,
    recheck_missing_folders,
)
from cryosnake.aws.storage import glob_s3, read_s3_text, stage_errors, write_s3_text
from cryosnake.config import movie_table
from cryosnake.errors import ConfigError, CryosnakeError


@pytest.fixture
def bucket(aws_env: str) -> str:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lab")
    for key in (
        "proj/movies/a.tiff",
        "proj/movies/b.tiff",
        "proj/movies/notes.txt",
        "proj/movies/old/c.tiff",
        "proj/moviesX/d.tiff",
        "other/movies/e.tiff",
    ):
        s3.put_object(Bucket="lab", Key=key, Body=b"x")
    return "lab"


def test_glob_matches_relative_to_the_prefix(bucket: str) -> None:
    assert glob_s3("s3://lab/proj", "movies/*.tiff") == ["movies/a.tiff", "movies/b.tiff"]
    assert glob_s3("s3://lab/proj/", "movies/*/*.tiff") == ["movies/old/c.tiff"]
    assert glob_s3("s3://lab", "*/movies/?.tiff") == [
        "other/movies/e.tiff",
        "proj/movies/a.tiff",
        "proj/movies/b.tiff",
    ]
    assert glob_s3("s3://lab/proj", "nothing/*.tiff") == []


def test_movie_table_lists_s3(bucket: str) -> None:
    config = {"simulate": {"enabled": False}, "input": {"movies": "movies/*.tiff"}}
    table = movie_table(config, lambda pattern: glob_s3("s3://lab/proj", pattern))
    assert table == {"a": "movies/a.tiff", "b": "movies/b.tiff"}
    config["input"]["movies"] = "movies/*"
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        movie_table(config, lambda pattern: glob_s3("s3://lab/proj", pattern))
    config["input"]["movies"] = "none/*.tiff"
    with pytest.raises(ConfigError, match="no movie file matches"):
        movie_table(config, lambda pattern: glob_s3("s3://lab/proj", pattern))


def test_write_a_workflow_file_relative_to_the_prefix(bucket: str) -> None:
    write_s3_text("s3://lab/proj", "results/chunks.tsv", "movie\tchunk\na\tchunk0001\n")
    assert read_s3_text("s3://lab/proj/", "results/chunks.tsv") == "movie\tchunk\na\tchunk0001\n"
    with pytest.raises(CryosnakeError, match=r"s3://nobucket/p/x\.tsv: cannot write"):
        write_s3_text("s3://nobucket/p", "x.tsv", "")


def test_one_listing_fills_snakemakes_file_cache(bucket: str) -> None:
    """Every object under the prefix and every folder above one is known to Snakemake,
    keyed as the S3 plugin keys them, and the bucket is marked as fully listed."""
    from snakemake.io import IOCache

    s3 = boto3.client("s3")
    s3.put_object(Bucket="lab", Key="proj/results/ctf/chunk0001/a.star", Body=b"12345")
    objects = list_storage("s3://lab/proj")
    keys = sorted(o.key for o in objects)
    assert keys == [
        "proj/movies/a.tiff",
        "proj/movies/b.tiff",
        "proj/movies/notes.txt",
        "proj/movies/old/c.tiff",
        "proj/moviesX/d.tiff",
        "proj/results/ctf/chunk0001/a.star",
    ]  # fmt: skip  (not other/)
    cache = IOCache(max_wait_time=20)
    local = Path(".snakemake/storage/s3")
    assert prime_inventory(cache, local, "s3://lab/proj", objects) == 6 + 6
    star = str(local / "lab/proj/results/ctf/chunk0001/a.star")
    assert cache.exists_in_storage[star] is True and cache.size[star] == 5
    for folder in ("results", "results/ctf", "results/ctf/chunk0001", "movies", "movies/old"):
        assert cache.exists_in_storage[str(local / "lab/proj" / folder)] is True, folder
    newest = max(o.mtime for o in objects if "/results/" in o.key)
    assert cache.mtime[str(local / "lab/proj/results")].storage() == newest
    assert cache.size[str(local / "lab/proj/results/ctf")] == 5
    assert str(local / "lab/proj") not in cache.exists_in_storage  # the prefix itself
    assert cache.exists_in_storage.has_inventory == {str(local / "lab")}
    with pytest.raises(CryosnakeError, match=r"s3://nobucket/proj/: cannot list"):
        list_storage("s3://nobucket/proj")


def test_a_folder_found_missing_is_looked_for_again() -> None:
    """The S3 plugin's folder check answers anew until it finds the folder (a chunk job
    retried after a reclaim writes the folder its first attempt did not)."""
    from snakemake_storage_plugin_s3 import StorageObject

    assert recheck_missing_folders() and recheck_missing_folders()  # once is enough
    folder = object.__new__(StorageObject)
    folder._is_dir = None
    listings: list[list[str]] = [[], ["a.star"]]
    folder.get_subkeys = lambda: iter(listings.pop(0))  # type: ignore[method-assign]
    assert folder.is_dir() is False  # the first attempt wrote nothing
    assert folder.is_dir() is True  # the retry did
    assert folder.is_dir() is True and listings == []  # a found folder is remembered


def test_a_path_elsewhere_in_the_bucket_turns_the_inventory_off() -> None:
    config = {"input": {"movies": "movies/*.tiff", "gain": "s3://lab/shared/gain.mrc"}}
    assert points_elsewhere(config, "s3://lab/proj") == "s3://lab/shared/gain.mrc"
    assert points_elsewhere(config, "s3://lab/shared") is None
    config["input"]["gain"] = "s3://lab/proj/gain.mrc"
    assert points_elsewhere({**config, "x": ["s3://other/a"]}, "s3://lab/proj") is None
    assert points_elsewhere({"x": ["s3://lab/projX/a"]}, "s3://lab/proj") == "s3://lab/projX/a"


def test_read_a_workflow_file_relative_to_the_prefix(bucket: str) -> None:
    s3 = boto3.client("s3")
    s3.put_object(Bucket="lab", Key="proj/results/movies_rejected.tsv", Body="movie\treason\n")
    assert read_s3_text("s3://lab/proj", "results/movies_rejected.tsv") == "movie\treason\n"
    assert read_s3_text("s3://lab", "proj/movies/a.tiff") == "x"
    with pytest.raises(CryosnakeError, match=r"s3://lab/proj/results/none\.tsv: cannot read"):
        read_s3_text("s3://lab/proj", "results/none.tsv")
    assert read_s3_text("s3://lab/proj", "results/none.tsv", missing_ok=True) is None


def test_missing_bucket_is_a_one_line_config_error(aws_env: str) -> None:
    with pytest.raises(
        ConfigError, match=r"cannot list s3://nobucket/proj/movies/ \(NoSuchBucket\)"
    ):
        glob_s3("s3://nobucket/proj", "movies/*.mrc")
    with pytest.raises(ConfigError, match="not an S3 URL"):
        glob_s3("/local/path", "movies/*.mrc")


def test_stage_errors_of_logs_written_since(bucket: str) -> None:
    s3 = boto3.client("s3")
    s3.put_object(
        Bucket="lab",
        Key="proj/results/logs/inspect/old.log",
        Body=b"cryosnake inspect: error: old.mrc: from an earlier run\n",
    )
    since = time.time() + 2
    time.sleep(3.1)
    s3.put_object(
        Bucket="lab",
        Key="proj/results/logs/motioncor/b.log",
        Body=b"reading\ncryosnake motioncor: error: movies/b.tiff: truncated (2 of 40 frames)\n",
    )
    s3.put_object(Bucket="lab", Key="proj/results/logs/ctf/a.log", Body=b"all fine\n")
    errors = stage_errors("s3://lab/proj", "results/logs", since)
    assert errors == [
        (
            "s3://lab/proj/results/logs/motioncor/b.log",
            "cryosnake motioncor: error: movies/b.tiff: truncated (2 of 40 frames)",
        )
    ]
