"""``cryosnake upload`` / ``cryosnake download`` against moto's S3 on 127.0.0.1.

Ground truth is the bytes the tests write; every check compares S3 or the local copy
with them (and with their SHA-256), not with what the code reported.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from cryosnake import cli
from cryosnake.aws import multipart, transfer
from cryosnake.aws import s3 as aws_s3
from cryosnake.aws.download_files import DownloadStats, download
from cryosnake.aws.upload_files import UploadStats, upload
from cryosnake.errors import CryosnakeError

BUCKET = "cryo-test-data"
URL = f"s3://{BUCKET}/run1"
PART = transfer.MIN_PART_SIZE  # 5 MiB
BIG = 12 * transfer.MIB + 123  # three parts of 5 MiB: 5 + 5 + 2
SEND_PART = multipart._upload_part  # the real one, whatever a test patches in


class Interrupted(Exception):
    """Stands in for the process being killed in the middle of an upload."""


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def s3(aws_env: str) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder with one multipart-sized file, small files in subfolders, an empty file."""
    files = {
        "big.bin": _bytes(BIG, 1),
        "a.txt": b"alpha\n" * 100,
        "sub/b.txt": b"beta\n" * 50,
        "sub/deeper/c.star": _bytes(3000, 2),
        "sub/empty.dat": b"",
    }
    root = tmp_path / "src"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root, files


def _upload(src: Path, url: str = URL, **kwargs: Any) -> UploadStats:
    kwargs = {"part_size": PART, "jobs": 4, "quiet": True, **kwargs}
    return upload(src, url, **kwargs)


def _download(dest: Path, url: str = URL, **kwargs: Any) -> DownloadStats:
    kwargs = {"part_size": PART, "jobs": 4, "quiet": True, **kwargs}
    return download(url, dest, **kwargs)


def _object(s3: Any, key: str) -> bytes:
    return bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _pending(s3: Any) -> list[dict[str, Any]]:
    return list(s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))


def _corrupt(s3: Any, key: str) -> None:
    """Replace an object's bytes (same size), keeping its old metadata."""
    head = s3.head_object(Bucket=BUCKET, Key=key)
    data = _object(s3, key)
    bad = bytes(b ^ 0xFF for b in data[:8]) + data[8:]
    s3.put_object(Bucket=BUCKET, Key=key, Body=bad, Metadata=head["Metadata"])


def _count_parts(monkeypatch: pytest.MonkeyPatch, fail_after: int | None = None) -> list[int]:
    """Record the data part numbers sent; raise Interrupted once ``fail_after`` were sent."""
    sent: list[int] = []

    def wrapper(
        client: Any, bucket: str, key: str, upload_id: str, number: int, data: bytes
    ) -> tuple[str, str]:
        if fail_after is not None and len(sent) == fail_after:
            raise Interrupted(f"killed before part {number}")
        result = SEND_PART(client, bucket, key, upload_id, number, data)
        sent.append(number)
        return result

    monkeypatch.setattr(multipart, "_upload_part", wrapper)
    return sent


def _no_temporaries(root: Path) -> None:
    assert not [p for p in root.rglob(".*") if ".tmp" in p.name]


# ---------------------------------------------------------------------------------------
# upload


def test_upload_folder_then_skip_then_replace(
    s3: Any, tree: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, files = tree
    sent = _count_parts(monkeypatch)
    stats = _upload(src)
    keys = sorted(f"run1/{rel}" for rel in files)
    assert sorted(stats.uploaded) == keys
    assert stats.skipped == []
    assert sorted(sent) == [1, 2, 3]  # only big.bin is multipart
    assert stats.bytes_sent == sum(len(d) for d in files.values())
    for rel, data in files.items():
        head = s3.head_object(Bucket=BUCKET, Key=f"run1/{rel}")
        assert head["ContentLength"] == len(data)
        assert head["Metadata"] == {"sha256": _sha(data)}
        assert _object(s3, f"run1/{rel}") == data
    assert s3.head_object(Bucket=BUCKET, Key="run1/big.bin")["ETag"].endswith('-3"')
    assert _pending(s3) == []  # the marker part went away with the completion

    sent.clear()
    again = _upload(src)
    assert again.uploaded == [] and sorted(again.skipped) == keys
    assert again.bytes_sent == 0 and sent == []
    assert "0 uploaded" in again.summary() and f"{len(keys)} skipped" in again.summary()

    # Same key, other content: a different size, and the same size with other bytes.
    (src / "a.txt").write_bytes(b"changed")
    (src / "sub/b.txt").write_bytes(files["sub/b.txt"].upper())
    third = _upload(src)
    assert sorted(third.replaced) == ["run1/a.txt", "run1/sub/b.txt"]
    assert sorted(third.uploaded) == ["run1/a.txt", "run1/sub/b.txt"]
    assert _object(s3, "run1/a.txt") == b"changed"
    assert _object(s3, "run1/sub/b.txt") == files["sub/b.txt"].upper()


def test_upload_single_file_key(s3: Any, tree: tuple[Path, dict[str, bytes]]) -> None:
    src, files = tree
    stats = _upload(src / "sub" / "b.txt", f"s3://{BUCKET}/one/")
    assert stats.uploaded == ["one/b.txt"]
    assert _object(s3, "one/b.txt") == files["sub/b.txt"]


def test_interrupted_upload_resumes_missing_parts(
    s3: Any, tree: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, files = tree
    big = src / "big.bin"
    _count_parts(monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        _upload(big, jobs=1)
    (pending,) = _pending(s3)
    listed = s3.list_parts(Bucket=BUCKET, Key="run1/big.bin", UploadId=pending["UploadId"])
    assert sorted(p["PartNumber"] for p in listed["Parts"]) == [1, 2, multipart.MARKER_PART]
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_object(Bucket=BUCKET, Key="run1/big.bin")

    sent = _count_parts(monkeypatch)
    stats = _upload(big)
    assert sent == [3]
    assert stats.resumed == ["run1/big.bin"]
    assert (stats.parts_sent, stats.parts_reused) == (1, 2)
    assert stats.bytes_sent == BIG - 2 * PART
    assert _object(s3, "run1/big.bin") == files["big.bin"]
    head = s3.head_object(Bucket=BUCKET, Key="run1/big.bin")
    assert head["Metadata"] == {"sha256": _sha(files["big.bin"])}
    assert _pending(s3) == []


def test_resume_resends_a_part_that_does_not_match(
    s3: Any, tree: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, files = tree
    big = src / "big.bin"
    _count_parts(monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        _upload(big, jobs=1)
    (pending,) = _pending(s3)
    # Part 2 in S3 now holds other bytes of the right size.
    s3.upload_part(
        Bucket=BUCKET,
        Key="run1/big.bin",
        UploadId=pending["UploadId"],
        PartNumber=2,
        Body=_bytes(PART, 99),
    )
    sent = _count_parts(monkeypatch)
    stats = _upload(big, jobs=1)
    assert sent == [2, 3]
    assert stats.parts_reused == 1
    assert _object(s3, "run1/big.bin") == files["big.bin"]


def test_pending_upload_of_an_older_file_version_is_aborted(
    s3: Any, tree: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = tree
    big = src / "big.bin"
    _count_parts(monkeypatch, fail_after=2)
    with pytest.raises(Interrupted):
        _upload(big, jobs=1)
    (stale,) = _pending(s3)
    # The file changes after the interruption: only its last part differs, so parts 1 and
    # 2 in S3 still hold its bytes, but the upload carries the old file's sha256 metadata.
    new = bytearray(big.read_bytes())
    new[-1] ^= 0xFF
    big.write_bytes(bytes(new))
    sent = _count_parts(monkeypatch)
    stats = _upload(big, jobs=1)
    assert sent == [1, 2, 3]
    assert stats.resumed == []
    assert stale["UploadId"] not in [u["UploadId"] for u in _pending(s3)]
    assert _pending(s3) == []
    assert _object(s3, "run1/big.bin") == bytes(new)
    head = s3.head_object(Bucket=BUCKET, Key="run1/big.bin")
    assert head["Metadata"] == {"sha256": _sha(bytes(new))}


# ---------------------------------------------------------------------------------------
# corruption


def test_corrupt_object_detected_by_download_and_upload_verify(
    s3: Any,
    tree: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src, files = tree
    _upload(src)
    _corrupt(s3, "run1/sub/b.txt")
    capsys.readouterr()

    dest = tmp_path / "dest"
    assert cli.main(["download", URL, str(dest), "--quiet", "--part-size", "5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cryosnake download: error:")
    assert "s3://cryo-test-data/run1/sub/b.txt" in err[0] and "corrupt" in err[0]
    assert not (dest / "sub" / "b.txt").exists()
    _no_temporaries(dest)

    # Without --verify the object looks up to date: same size, same metadata.
    assert "run1/sub/b.txt" in _upload(src).skipped
    assert cli.main(["upload", str(src), URL, "--verify", "--quiet", "--part-size", "5"]) == 0
    out = capsys.readouterr()
    assert "1 uploaded" in out.out and "1 corrupt" in out.out
    assert "run1/sub/b.txt" in out.err  # reported
    assert _object(s3, "run1/sub/b.txt") == files["sub/b.txt"]
    stats = _download(dest)
    assert (dest / "sub" / "b.txt").read_bytes() == files["sub/b.txt"]
    assert stats.files == len(files)


def test_upload_verify_passes_intact_objects(s3: Any, tree: tuple[Path, dict[str, bytes]]) -> None:
    src, files = tree
    _upload(src)
    stats = _upload(src, verify=True)
    assert stats.uploaded == [] and stats.corrupt == [] and len(stats.skipped) == len(files)


# ---------------------------------------------------------------------------------------
# download


def test_download_round_trip_skip_and_replace(
    s3: Any, tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    src, files = tree
    _upload(src)
    s3.put_object(Bucket=BUCKET, Key="run1/foreign.txt", Body=b"no sha256 metadata")
    files = {**files, "foreign.txt": b"no sha256 metadata"}
    dest = tmp_path / "dest"
    stats = _download(dest)
    assert sorted(stats.downloaded) == sorted(f"run1/{rel}" for rel in files)
    assert stats.unverified == ["run1/foreign.txt"]
    assert stats.bytes_received == sum(len(d) for d in files.values())
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == files
    _no_temporaries(dest)

    again = _download(dest)
    assert again.downloaded == [] and len(again.skipped) == len(files)

    (dest / "a.txt").write_bytes(b"local edit")
    bad = bytearray(files["sub/deeper/c.star"])
    bad[0] ^= 1
    (dest / "sub/deeper/c.star").write_bytes(bytes(bad))  # same size, other bytes
    third = _download(dest)
    assert sorted(third.replaced) == ["run1/a.txt", "run1/sub/deeper/c.star"]
    assert (dest / "a.txt").read_bytes() == files["a.txt"]
    assert (dest / "sub/deeper/c.star").read_bytes() == files["sub/deeper/c.star"]

    single = _download(tmp_path / "single", f"{URL}/big.bin")
    assert single.downloaded == ["run1/big.bin"]
    assert (tmp_path / "single" / "big.bin").read_bytes() == files["big.bin"]


def test_failed_download_leaves_no_partial_file(
    s3: Any, tree: tuple[Path, dict[str, bytes]], tmp_path: Path
) -> None:
    src, _ = tree
    _upload(src / "big.bin")
    client = boto3.client("s3")

    def cut(params: dict[str, Any], **kwargs: Any) -> None:
        """The connection drops on every request for a range past the first part."""
        if not params.get("Range", "bytes=0-").startswith("bytes=0-"):
            raise CryosnakeError(f"{params['Key']}: connection reset")

    client.meta.events.register("before-parameter-build.s3.GetObject", cut)
    fresh = tmp_path / "fresh"
    with pytest.raises(CryosnakeError, match="connection reset"):
        _download(fresh, jobs=1, client=client)
    assert not (fresh / "big.bin").exists()
    _no_temporaries(fresh)

    old = tmp_path / "old"
    old.mkdir()
    (old / "big.bin").write_bytes(b"previous version")
    with pytest.raises(CryosnakeError, match="connection reset"):
        _download(old, jobs=1, client=client)
    assert (old / "big.bin").read_bytes() == b"previous version"
    _no_temporaries(old)


@pytest.mark.parametrize("name", ["a.txt", "big.bin"])  # one GET, ranged GETs
def test_object_replaced_during_download_is_an_error(
    s3: Any, tree: tuple[Path, dict[str, bytes]], tmp_path: Path, name: str
) -> None:
    src, _ = tree
    _upload(src / name)
    client = boto3.client("s3")

    def replace(params: dict[str, Any], **kwargs: Any) -> None:
        """Another writer replaces the object after it was planned, before it is read."""
        s3.put_object(Bucket=BUCKET, Key=params["Key"], Body=b"new version")

    client.meta.events.register("before-parameter-build.s3.GetObject", replace)
    dest = tmp_path / "dest"
    with pytest.raises(CryosnakeError, match=f"run1/{name}: the object changed during"):
        _download(dest, client=client)
    assert not (dest / name).exists()
    _no_temporaries(dest)


# ---------------------------------------------------------------------------------------
# command line


def _cli(args: list[str]) -> int:
    try:
        return cli.main(args)
    except SystemExit as exc:  # argparse usage errors and --help
        return int(exc.code or 0)


def test_help_has_example(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("upload", "download"):
        assert _cli([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert f"cryosnake {command}" in out and "Example::" in out


def test_cli_success_prints_summary(
    s3: Any, tree: tuple[Path, dict[str, bytes]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, files = tree
    assert _cli(["upload", str(src / "sub"), URL, "--quiet"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("upload: 3 files") and "3 uploaded" in out[0]
    assert _cli(["download", URL, str(tmp_path / "d"), "--quiet", "--jobs", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("download: 3 files") and "3 downloaded" in out[0]
    assert (tmp_path / "d" / "deeper" / "c.star").read_bytes() == files["sub/deeper/c.star"]


@pytest.mark.parametrize(
    ("name", "expected_code", "needle"),
    [
        ("missing src", 1, "nope"),
        ("bad url scheme", 1, "http://bucket/x"),
        ("bad bucket name", 1, "s3://Bad_Bucket"),
        ("empty url", 1, "s3://"),
        ("upload bucket not found", 1, "s3://no-such-bucket: bucket not found"),
        ("download bucket not found", 1, "s3://no-such-bucket: bucket not found"),
        ("no objects", 1, "s3://cryo-test-data/empty"),
        ("dest not writable", 1, "a.txt"),
        ("part size too small", 2, "--part-size"),
        ("zero jobs", 2, "--jobs"),
    ],
)
def test_bad_inputs_are_one_line_errors(
    s3: Any,
    tree: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    expected_code: int,
    needle: str,
) -> None:
    src, _ = tree
    _upload(src / "a.txt")
    args = {
        "missing src": ["upload", str(tmp_path / "nope"), URL],
        "bad url scheme": ["upload", str(src), "http://bucket/x"],
        "bad bucket name": ["download", "s3://Bad_Bucket/x", str(tmp_path / "d")],
        "empty url": ["download", "s3://", str(tmp_path / "d")],
        "upload bucket not found": ["upload", str(src), "s3://no-such-bucket/x"],
        "download bucket not found": ["download", "s3://no-such-bucket/x", str(tmp_path)],
        "no objects": ["download", f"s3://{BUCKET}/empty", str(tmp_path / "d")],
        "dest not writable": ["download", URL, str(src / "a.txt" / "inside")],
        "part size too small": ["upload", str(src), URL, "--part-size", "4"],
        "zero jobs": ["download", URL, str(tmp_path / "d"), "--jobs", "0"],
    }[name]
    capsys.readouterr()
    assert _cli([*args, "--quiet"]) == expected_code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("cryosnake")
    assert needle in lines[0]


@pytest.mark.parametrize("command", ["upload", "download"])
def test_access_denied_is_one_line(
    aws_env: str,
    tree: tuple[Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    src, _ = tree
    client = boto3.client("s3")
    stubber = Stubber(client)
    operation = "list_multipart_uploads" if command == "upload" else "list_objects_v2"
    stubber.add_client_error(
        operation,
        service_error_code="AccessDenied",
        service_message="Access Denied",
        http_status_code=403,
    )
    stubber.activate()
    monkeypatch.setattr(aws_s3, "client", lambda jobs: client)
    args = [str(src), URL] if command == "upload" else [URL, str(tmp_path / "d")]
    assert cli.main([command, *args, "--quiet"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "s3://cryo-test-data/run1: access denied (AccessDenied" in lines[0]


def test_raw_movies_are_tagged_for_the_archive_rule(
    s3: Any, tree: tuple[Path, dict[str, bytes]]
) -> None:
    from cryosnake.aws.stack import RAW_MOVIE_TAG

    root, files = tree
    tag = [{"Key": RAW_MOVIE_TAG[0], "Value": RAW_MOVIE_TAG[1]}]

    def tags(key: str) -> list[dict[str, str]]:
        return list(s3.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"])

    # Without the option: no tag, neither on a single put nor on a multipart upload.
    _upload(root)
    assert tags("run1/a.txt") == [] and tags("run1/big.bin") == []
    # With it: objects already there are skipped, but get the tag.
    assert _cli(["upload", str(root), URL, "--part-size", "5", "--raw-movies", "--quiet"]) == 0
    for rel in files:
        assert tags(f"run1/{rel}") == tag, rel
    # New objects carry it from the start (put and multipart).
    assert _cli(["upload", str(root), f"{URL}/again", "--part-size", "5", "--raw-movies"]) == 0
    assert tags("run1/again/a.txt") == tag and tags("run1/again/big.bin") == tag
