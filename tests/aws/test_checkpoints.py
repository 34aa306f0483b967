"""Spot-safe resume: iterative stages keep their checkpoint in S3 (the local stand-in).

A spot reclaim takes the instance's disk, the stage's output folder with it. Here a
refine3d run with ``--checkpoint-url`` on moto's S3 is killed in its second iteration,
its output folder is deleted (the retried job lands on a fresh instance), and the
rerun resumes from the S3 checkpoint at iteration 2 or later and ends with the poses of
an uninterrupted run; the S3 checkpoint is deleted once the outputs are written. The
same for initial3d, killed after its first checkpoint (10 mini-batches into its first
attempt). (class2d: tests/aws/test_batch_e2e.py, on the Batch stand-in.)
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from particles_sim import simulate_particles, write_particles

from cryosnake.aws.checkpoints import CheckpointMirror
from cryosnake.errors import CryosnakeError
from cryosnake.io import read_mrc, read_star, write_mrc

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]
BUCKET = "spot-bucket"
PREFIX = "scratch/project/checkpoints/refine3d/"


def _kill_once_checkpointed(args: Sequence[object], s3: Any, prefix: str) -> None:
    """Run ``cryosnake *args`` and SIGKILL it as soon as its checkpoint is in S3."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cryosnake.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while not s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount"):
            assert proc.poll() is None, f"{args[0]} ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _args(star: Path, reference: Path, out: Path, url: str | None) -> list[object]:
    args: list[object] = [
        "refine3d", "--particles", star, "--reference", reference, "--out-dir", out,
        "--diameter", "165", "--iterations", "3",
    ]  # fmt: skip
    return [*args, "--checkpoint-url", url] if url else args


def test_reclaimed_refine3d_resumes_from_s3(aws_env: str, tmp_path: Path, run_cli: RunCli) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    url = f"s3://{BUCKET}/{PREFIX}"
    stack = simulate_particles(600, junk_fraction=0.0, snr=0.05, seed=22)
    star = write_particles(stack, tmp_path / "data")
    reference = tmp_path / "truth.mrc"
    write_mrc(reference, stack.volume(), 4.5, kind="volume")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert run_cli(_args(star, reference, straight, None))[0] == 0

    # killed in iteration 2: the checkpoint of iteration 1 is in S3
    _kill_once_checkpointed(_args(star, reference, killed, url), s3, PREFIX)
    shutil.rmtree(killed)  # the instance is gone, and its disk with it

    code, out, err = run_cli(_args(star, reference, killed, url))
    assert code == 0, err
    assert f"checkpoint restored from {url}run_checkpoint.npz" in out
    resumed = re.search(r"resuming from .* after iteration (\d+)", out)
    assert resumed is not None and int(resumed.group(1)) >= 1, out
    assert "iteration 1/" not in out and "iteration 3/3" in out
    a = read_star(straight / "run_data.star")["particles"]
    b = read_star(killed / "run_data.star")["particles"]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        np.testing.assert_allclose(a[label], b[label], atol=1e-6)
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("KeyCount")


def test_reclaimed_initial3d_resumes_from_s3(aws_env: str, tmp_path: Path, run_cli: RunCli) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    prefix = "scratch/project/checkpoints/initial3d/"
    url = f"s3://{BUCKET}/{prefix}"
    stack = simulate_particles(400, junk_fraction=0.0, snr=0.05, seed=23)
    star = write_particles(stack, tmp_path / "data")

    def args(out: Path) -> list[object]:
        return ["initial3d", "--particles", star, "--out-dir", out, "--diameter", "165",
                "--iterations", "20", "--batch", "100", "--checkpoint-url", url]  # fmt: skip

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    code, out, err = run_cli(args(straight))
    assert code == 0, err
    assert "attempt 1/3: mini-batch 10/20" in out
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount")
    _kill_once_checkpointed(args(killed), s3, prefix)
    shutil.rmtree(killed)  # the instance is gone, and its disk with it

    code, out, err = run_cli(args(killed))
    assert code == 0, err
    assert f"checkpoint restored from {url}initial_model_checkpoint.npz" in out
    assert re.search(r"resuming from .*: [0-2] attempt\(s\) and", out), out
    assert "attempt 1/3: mini-batch 10/20" not in out and "full pass" in out
    a, _ = read_mrc(straight / "initial_model.mrc")
    b, _ = read_mrc(killed / "initial_model.mrc")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))
    pa = read_star(straight / "initial_model_data.star")["particles"]
    pb = read_star(killed / "initial_model_data.star")["particles"]
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        np.testing.assert_allclose(pa[label], pb[label], atol=1e-4)
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount")


def test_mirror_errors_are_one_line(aws_env: str, tmp_path: Path) -> None:
    mirror = CheckpointMirror("s3://no-such-bucket/x/", tmp_path / "run_checkpoint.npz", "t")
    (tmp_path / "run_checkpoint.npz").write_bytes(b"state")
    with pytest.raises(CryosnakeError, match=r"^cannot write checkpoint s3://no-such-bucket/x/"):
        mirror.store()
    (tmp_path / "run_checkpoint.npz").unlink()
    # nothing to restore (S3 answers a HEAD of a missing bucket with 404, like a key):
    # the run starts over and its first upload fails as above
    assert mirror.restore() is False
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_scratch_url_is_under_the_expiring_prefix() -> None:
    from cryosnake.aws.checkpoints import scratch_url

    assert scratch_url("s3://bkt/main", "class2d") == "s3://bkt/scratch/main/checkpoints/class2d/"
    assert scratch_url("s3://bkt/a/b/", "refine3d") == "s3://bkt/scratch/a/b/checkpoints/refine3d/"
    assert scratch_url("s3://bkt", "refine3d") == "s3://bkt/scratch/checkpoints/refine3d/"
