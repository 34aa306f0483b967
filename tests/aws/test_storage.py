"""Movie discovery in S3, workflow files read back, and the stage errors of failed jobs."""

from __future__ import annotations

import time

import boto3
import pytest

from cryosnake.aws.storage import glob_s3, read_s3_text, stage_errors
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
