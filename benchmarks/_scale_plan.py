"""Planning time of the workflow against the number of movies (issue 18, part 1).

A dry run (``snakemake -n``) of the whole workflow (3D on) over ``N`` movies that are
empty files (planning reads no movie), with local files or with S3 as default storage
on moto's server (the local stand-in for S3, on 127.0.0.1: the movies are objects, and
the workflow lists them and looks its files up there). Each run starts from an empty
results folder, so every job is planned; ``before`` runs the rules of another commit
(a ``git worktree`` of it) with that commit's package, to compare one run each.

Run it through ``benchmarks/bench_scale.py plan``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def worktree(commit: str, dest: Path) -> Path:
    """A checkout of ``commit``'s workflow files at ``dest`` (git worktree)."""
    if not dest.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(dest), commit],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
    return dest


def remove_worktree(dest: Path) -> None:
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(dest)], cwd=ROOT, capture_output=True
    )


def _dry_run(workflow: Path, workdir: Path, config: dict[str, Any], extra: list[str],
             env: dict[str, str], timeout: float) -> float | None:  # fmt: skip
    """Seconds of ``snakemake -n`` (None: it ran past ``timeout``)."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    shutil.rmtree(workdir / ".snakemake", ignore_errors=True)
    cmd = [str(SNAKEMAKE), "-n", "--quiet", "--snakefile", str(workflow / "Snakefile"),
           "--directory", str(workdir), "--configfile", str(path), *extra]  # fmt: skip
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=workflow, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake -n failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return seconds


def _config(movies: str, results: str) -> dict[str, Any]:
    return {
        "results": results,
        "input": {"movies": movies, "gain": None},
        "simulate": {"enabled": False},
        "map3d": True,
    }


def _package(env: dict[str, str], workflow: Path) -> dict[str, str]:
    """``env`` with the cryosnake package of ``workflow``'s checkout first on the path (the
    rules of another commit run with the package of that commit)."""
    if workflow.resolve() == ROOT:
        return env
    return {**env, "PYTHONPATH": str(workflow / "src")}


def plan_local(workflow: Path, workdir: Path, n: int, timeout: float) -> float | None:
    """Seconds to plan ``n`` local movies with the rules (and package) of ``workflow``."""
    folder = workdir / f"movies{n}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"FoilHole_{i:06d}_Data_fractions.tiff").touch()
    run = workdir / "run"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    config = _config(str(folder / "*.tiff"), str(run / "results"))
    return _dry_run(workflow, run, config, [], _package(dict(os.environ), workflow), timeout)


class S3StandIn:
    """moto's server on 127.0.0.1 with one bucket; stopped by :meth:`stop`."""

    def __init__(self) -> None:
        import socket

        import boto3
        from moto.server import ThreadedMotoServer

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
        }  # fmt: skip
        self.s3 = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
        )  # fmt: skip
        self.bucket = "scale"
        self.s3.create_bucket(Bucket=self.bucket)
        self.uploaded: set[tuple[str, int]] = set()

    def movies(self, project: str, n: int) -> None:
        """``n`` empty movie objects under ``project/movies/``."""
        if (project, n) in self.uploaded:
            return
        for i in range(n):
            key = f"{project}/movies/FoilHole_{i:06d}_Data_fractions.tiff"
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"")
        self.uploaded.add((project, n))

    def clear_results(self, project: str) -> None:
        prefix = f"{project}/results/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                self.s3.delete_object(Bucket=self.bucket, Key=item["Key"])

    def stop(self) -> None:
        self.server.stop()


def plan_s3(workflow: Path, workdir: Path, n: int, s3: S3StandIn, timeout: float) -> float | None:
    """Seconds to plan ``n`` movies in S3 (default storage) with ``workflow``'s rules."""
    project = f"p{n}"
    s3.movies(project, n)
    s3.clear_results(project)
    run = workdir / "run-s3"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    extra = [
        "--default-storage-provider", "s3",
        "--default-storage-prefix", f"s3://{s3.bucket}/{project}",
        "--storage-s3-endpoint-url", s3.endpoint,
    ]  # fmt: skip
    config = _config("movies/*.tiff", "results")
    return _dry_run(workflow, run, config, extra, _package(s3.env, workflow), timeout)
