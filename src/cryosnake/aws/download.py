"""Download the objects under an S3 prefix into a folder: parallel, skip, verified.

Each object ``prefix/<path>`` goes to ``DEST/<path>`` (if the URL names one object, it
goes to ``DEST/<name>``). Objects larger than ``--part-size`` are fetched in ranges by
``--jobs`` threads. Each file is written under a hidden temporary name in its folder and
renamed into place only once its size and SHA-256 match the object's ``x-amz-meta-sha256``
metadata (set by ``cryosnake upload``; objects without it are checked by size only), so
an interrupted or failed download leaves no partial file. A corrupt object is an error
naming its key. A local file that already has the object's size and SHA-256 is skipped;
one that differs is replaced.

Example::

    cryosnake download s3://my-bucket/project1/results results --jobs 16
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from cryosnake.aws.download_files import download
from cryosnake.aws.upload import add_transfer_options
from cryosnake.stages._common import run_stage

__all__ = ["add_args", "main"]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="source s3://bucket[/prefix]")
    parser.add_argument("dest", help="local folder (created if missing)")
    add_transfer_options(parser)


def _run(args: argparse.Namespace) -> int:
    stats = download(
        args.url, args.dest, part_size=args.part_size, jobs=args.jobs, quiet=args.quiet
    )
    print(stats.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage("download", __doc__, add_args, _run, argv)
