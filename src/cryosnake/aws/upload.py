"""Upload a file or a folder to S3: parallel multipart parts, skip, resume, verify.

A folder is sent recursively; each file goes to the key ``prefix/<path relative to the
folder>`` (a single file to ``prefix/<name>``). Files larger than ``--part-size`` are
sent as multipart uploads by ``--jobs`` threads, smaller ones in one request. Every
request carries a SHA-256 that S3 checks, and every object gets the SHA-256 of the whole
file as metadata ``x-amz-meta-sha256``; once sent, S3 must report the expected size,
metadata and checksum.

With ``--raw-movies`` every object gets the S3 tag ``cryosnake-class=raw-movie``, which
the lifecycle rule of infra/cryosnake.yaml moves to Glacier Deep Archive after
RawMoviesArchiveDays (objects already there get the tag too).

An object that already has the file's size and SHA-256 is skipped (``--verify``:
downloaded and hashed first, and sent again if its bytes are corrupt); one with the same
key but another size or SHA-256 is replaced. A multipart upload cut short (killed,
network lost) is resumed by the next run: the parts already in S3 that match the local
bytes are kept and only the missing ones are sent. Pending uploads that belong to another
version of the file are aborted.

Example::

    cryosnake upload data/movies s3://my-bucket/project1/movies --raw-movies --jobs 16
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cryosnake.aws import transfer
from cryosnake.aws.stack import RAW_MOVIE_TAG
from cryosnake.aws.upload_files import upload
from cryosnake.stages._common import positive_int, run_stage

__all__ = ["add_args", "add_transfer_options", "main"]


def _part_size(text: str) -> int:
    """argparse type: MiB (>= 5, S3's minimum part size) -> bytes."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from err
    minimum = transfer.MIN_PART_SIZE // transfer.MIB
    if not value >= minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum} (MiB, S3's minimum), got {text}")
    return int(value * transfer.MIB)


def add_transfer_options(parser: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--part-size`` and ``--quiet``, shared with ``cryosnake download``."""
    default_mib = transfer.DEFAULT_PART_SIZE // transfer.MIB
    for flag, kind, default, metavar, text in (
        ("--jobs", positive_int, transfer.DEFAULT_JOBS, "N", "parallel requests"),
        ("--part-size", _part_size, str(default_mib), "MB", "part size in MiB, at least 5"),
    ):  # a string default goes through `kind`, as if given on the command line
        parser.add_argument(
            flag, type=kind, default=default, metavar=metavar, help=f"{text} (default %(default)s)"
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="file or folder to upload (folders recursively)")
    parser.add_argument("url", help="destination s3://bucket[/prefix]")
    add_transfer_options(parser)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="download and hash objects that look up to date; upload again any that differ",
    )
    key, value = RAW_MOVIE_TAG
    parser.add_argument(
        "--raw-movies",
        action="store_true",
        help=f"tag the objects {key}={value}: the stack's lifecycle rule (infra/cryosnake.yaml) "
        "moves them to Glacier Deep Archive after RawMoviesArchiveDays",
    )


def _run(args: argparse.Namespace) -> int:
    stats = upload(
        args.src,
        args.url,
        part_size=args.part_size,
        jobs=args.jobs,
        verify=args.verify,
        quiet=args.quiet,
        tags=dict([RAW_MOVIE_TAG]) if args.raw_movies else None,
    )
    print(stats.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("upload", __doc__, add_args, _run, argv)
