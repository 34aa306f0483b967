"""A stand-in for the container runtime behind moto's AWS Batch.

moto runs a Batch job by asking a Docker client to start the job definition's image
with its command and environment. This machine has no Docker engine, so
:class:`FakeDocker` takes the Docker client's place: every job's command runs as a
local subprocess in a fresh, empty folder, the way a new container starts with
nothing but its image. The "image" here is this test environment's Python (with
cryosnake, snakemake and the plugins), and a wheelhouse stands in for the wheels that
containers/Dockerfile.* store at /opt/wheels. The "instance role" gives the job its
credentials and the S3 endpoint, which is why no credential needs to travel in the
job definition, and why the tests can assert that none does.

``reclaim`` emulates a spot reclaim: it is asked about every container while it
runs, and the container is killed (exit status 137) as soon as it
answers true, e.g. once a stage has written an output in the container's folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Launch:
    """One container start: what the job definition asked for."""

    name: str
    command: list[str]
    environment: dict[str, str]
    workdir: Path
    returncode: int | None = None
    killed: bool = False


class FakeContainer:
    """A subprocess with the part of docker's Container API that moto uses."""

    def __init__(
        self, launch: Launch, env: dict[str, str], reclaim: Callable[[Launch], bool] | None
    ) -> None:
        self.launch = launch
        self.attrs: dict[str, Any] = {"NetworkSettings": {"Networks": {}, "IPAddress": ""}}
        self._out = (launch.workdir.parent / f"{launch.workdir.name}.stdout").open("wb")
        self._err = (launch.workdir.parent / f"{launch.workdir.name}.stderr").open("wb")
        self._proc = subprocess.Popen(
            launch.command,
            cwd=launch.workdir,
            env=env,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )
        self.status = "running"
        if reclaim is not None:
            threading.Thread(target=self._watch, args=(reclaim,), daemon=True).start()

    def _watch(self, reclaim: Callable[[Launch], bool]) -> None:
        while self._proc.poll() is None:
            if reclaim(self.launch):
                self.launch.killed = True
                os.killpg(self._proc.pid, 9)
                return
            time.sleep(0.1)

    def reload(self) -> None:
        code = self._proc.poll()
        if code is not None:
            self.status = "exited"
            self.launch.returncode = 128 - code if code < 0 else code  # as docker reports

    def kill(self) -> None:
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, 9)
        self._proc.wait()
        self.reload()

    def wait(self) -> dict[str, int]:
        self._proc.wait()
        self.reload()
        return {"StatusCode": int(self.launch.returncode or 0)}

    def logs(self, stdout: bool = True, stderr: bool = True, **_: Any) -> bytes:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        parts = []
        for wanted, handle in ((stdout, self._out), (stderr, self._err)):
            if wanted:
                handle.flush()
                parts.append(Path(handle.name).read_bytes())
        text = b"".join(parts)
        return b"\n".join(stamp + b" " + line for line in text.splitlines() if line.strip())

    def remove(self) -> None:
        self._out.close()
        self._err.close()


@dataclass
class FakeContainers:
    root: Path
    base_env: dict[str, str]
    reclaim: Callable[[Launch], bool] | None
    launches: list[Launch] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(
        self,
        image: str,
        command: list[str],
        environment: dict[str, str],
        name: str,
        **_: Any,
    ) -> FakeContainer:
        with self._lock:
            workdir = self.root / f"container-{len(self.launches):03d}"
            workdir.mkdir(parents=True)
            launch = Launch(name, list(command), dict(environment), workdir)
            self.launches.append(launch)
        env = {**self.base_env, **environment, "HOME": str(workdir)}
        return FakeContainer(launch, env, self.reclaim)


class FakeImages:
    def get(self, name: str) -> str:
        return name

    def pull(self, name: str) -> str:
        return name


class FakeDocker:
    """The docker client moto gets; ``launches`` records every container started."""

    def __init__(
        self,
        root: Path,
        base_env: dict[str, str],
        reclaim: Callable[[Launch], bool] | None = None,
    ) -> None:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        self.containers = FakeContainers(root, base_env, reclaim)
        self.images = FakeImages()

    @property
    def launches(self) -> list[Launch]:
        return self.containers.launches
