"""containers/build.sh: linux/amd64 images tagged with the version and the git commit.

No Docker engine here: a stand-in ``docker`` on PATH records its arguments.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_build_targets_amd64_and_tags_version_and_commit(tmp_path: Path) -> None:
    log = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(ROOT / "containers" / "build.sh"), "--push", "reg.example"],
                   check=True, env=env, timeout=60)  # fmt: skip
    version = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version
    v = re.escape(version.group(1))
    calls = log.read_text().splitlines()
    builds = [c for c in calls if c.startswith("build ")]
    assert len(builds) == 2
    for kind, build in zip(("cpu", "gpu"), builds, strict=True):
        assert build.startswith("build --platform linux/amd64 ")
        commit = re.search(r"--build-arg CRYOSNAKE_COMMIT=(\S+)", build)
        assert commit and re.fullmatch(r"[0-9a-f]{12}(-dirty)?|unknown", commit.group(1))
        assert re.search(rf"--build-arg CRYOSNAKE_VERSION={v}( |$)", build)
        assert f"-t cryosnake/cryosnake:{version.group(1)}-{kind} " in build
        assert f"-t cryosnake/cryosnake:{version.group(1)}-{commit.group(1)}-{kind} " in build
        pushed = {c.split()[-1] for c in calls if c.startswith("push ")}
        assert f"reg.example/cryosnake:{version.group(1)}-{commit.group(1)}-{kind}" in pushed
    for kind in ("cpu", "gpu"):
        text = (ROOT / "containers" / f"Dockerfile.{kind}").read_text()
        assert "ENV CRYOSNAKE_IMAGE_COMMIT=$CRYOSNAKE_COMMIT" in text
