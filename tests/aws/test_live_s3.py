"""cryosnake live with S3: watching a prefix, staging movies in the storage prefix
(uploaded from a folder, or copied within S3), reading the results back."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from cryosnake.aws.storage import write_s3_text
from cryosnake.errors import ConfigError
from cryosnake.live.command import S3Results, storage_prefix
from cryosnake.live.staging import S3Staging
from cryosnake.live.watch import Arrival, S3Watcher

EPU = "epu/Images-Disc1/GridSquare_00000001/Data"


@pytest.fixture
def bucket(aws_env: str) -> str:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="lab")
    for key, body in (
        (f"{EPU}/FoilHole_1_Data_2_3_20261204_101010_fractions.tiff", b"movie-1"),
        (f"{EPU}/FoilHole_1_Data_2_3_20261204_101010.mrc", b"epu-sum"),
        (f"{EPU}/FoilHole_1_Data_2_3_20261204_101010.xml", b"<xml/>"),
        ("epu/.partial/m9.tiff", b"x"),
        ("epu/flat_0002.mrc", b"movie-2"),
        ("elsewhere/flat_0003.mrc", b"movie-3"),
    ):
        s3.put_object(Bucket="lab", Key=key, Body=body)
    return "lab"


def test_an_s3_prefix_is_watched_for_movies(bucket: str) -> None:
    s3 = boto3.client("s3")
    watcher = S3Watcher(f"s3://{bucket}/epu/", s3)
    found = watcher.poll()
    assert [a.movie for a in found] == [
        "FoilHole_1_Data_2_3_20261204_101010_fractions",
        "flat_0002",
    ]
    assert found[1] == Arrival("flat_0002", f"s3://{bucket}/epu/flat_0002.mrc", 7)
    assert watcher.poll() == []
    s3.put_object(Bucket=bucket, Key="epu/flat_0004.mrc", Body=b"m4")
    assert [a.movie for a in watcher.poll()] == ["flat_0004"]
    again = S3Watcher(f"s3://{bucket}/epu", s3, known={a.movie: a.source for a in found})
    assert [a.movie for a in again.poll()] == ["flat_0004"]


def test_movies_are_staged_in_the_storage_prefix(bucket: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    staging = S3Staging(f"s3://{bucket}/proj", "results/live/movies", s3)
    assert staging.pattern == "results/live/movies/*"
    local = tmp_path / "m5.tiff"
    local.write_bytes(b"local movie" * 1000)
    path = staging.stage(Arrival("m5", str(local), local.stat().st_size))
    assert path == "results/live/movies/m5.tiff"
    body = s3.get_object(Bucket=bucket, Key="proj/results/live/movies/m5.tiff")["Body"].read()
    assert body == local.read_bytes()
    head = s3.head_object(Bucket=bucket, Key="proj/results/live/movies/m5.tiff")
    assert head["Metadata"]["sha256"]  # checked upload (cryosnake.aws.upload_files)
    assert staging.stage(Arrival("m5", str(local), local.stat().st_size)) == path
    copied = staging.stage(Arrival("flat_0002", f"s3://{bucket}/epu/flat_0002.mrc", 7))
    assert copied == "results/live/movies/flat_0002.mrc"
    body = s3.get_object(Bucket=bucket, Key="proj/results/live/movies/flat_0002.mrc")["Body"]
    assert body.read() == b"movie-2"


def test_results_are_read_from_the_storage_prefix(bucket: str) -> None:
    write_s3_text(f"s3://{bucket}/proj", "results/chunks.tsv", "movie\tchunk\nm1\tchunk0001\n")
    star = "data_particles\n\nloop_\n_rlnCoordinateX #1\n1.0\n2.0\n"
    write_s3_text(f"s3://{bucket}/proj", "results/particles.star", star)
    results = S3Results(f"s3://{bucket}/proj", "results")
    assert results.chunk_table() == {"m1": "chunk0001"}
    assert results.particles("particles.star") == 2
    assert results.particles("particles_selected.star") == 0


def test_the_storage_prefix_comes_from_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    folder = tmp_path / "snakemake" / "aws"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        "default-storage-provider: s3\ndefault-storage-prefix: s3://lab/proj\n"
    )
    assert storage_prefix("aws") == "s3://lab/proj"
    given = ["--jobs", "4", "--default-storage-prefix", "s3://lab/other"]
    assert storage_prefix("aws", given) == "s3://lab/other"
    assert storage_prefix("aws", ["--default-storage-prefix=s3://lab/x"]) == "s3://lab/x"
    assert storage_prefix(None) is None
    with pytest.raises(ConfigError, match="no such snakemake profile"):
        storage_prefix("nowhere")
