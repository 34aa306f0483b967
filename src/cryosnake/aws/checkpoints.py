"""Checkpoints of the iterative stages, mirrored to S3: resume after a spot reclaim.

class2d and refine3d write a checkpoint into their output folder after every iteration
and resume from it. On AWS Batch that folder lives on the instance's disk: a reclaimed
spot instance takes it along, and the job Snakemake resubmits starts over on another
instance. With ``--checkpoint-url s3://BUCKET/PREFIX/`` a stage also uploads its
checkpoint there after every iteration and, when its folder holds none, downloads the
last one before it starts; it deletes it once its outputs are written. On S3 storage the
workflow passes ``s3://BUCKET/scratch/PROJECT/checkpoints/RULE/``, under the bucket's
expiring ``scratch/`` prefix (infra/cryosnake.yaml). The checkpoint carries the stage's
fingerprint of its inputs and settings, so one of other inputs is ignored, as locally.
"""

from __future__ import annotations

import os
import posixpath
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from cryosnake.errors import CryosnakeError

__all__ = ["SCRATCH", "CheckpointMirror", "scratch_url"]

#: expiring key prefix of the bucket (infra/cryosnake.yaml: ScratchPrefix)
SCRATCH = "scratch"


class CheckpointMirror:
    """The S3 copy of one stage's checkpoint file (no-op without a URL).

    Parameters
    ----------
    url : ``s3://BUCKET/PREFIX/`` (the object is PREFIX/<checkpoint file name>) or None
    local : the checkpoint file in the stage's output folder
    stage : the stage's name, for messages
    """

    def __init__(self, url: str | None, local: Path, stage: str, client: Any = None) -> None:
        self.local = Path(local)
        self.stage = stage
        self.bucket = self.key = ""
        self._client = client
        self._stored = False
        if url:
            from cryosnake.aws.s3 import parse_s3_url  # boto3: the aws extra

            self.bucket, prefix = parse_s3_url(url)
            self.key = posixpath.join(prefix, self.local.name) if prefix else self.local.name

    @property
    def url(self) -> str | None:
        return f"s3://{self.bucket}/{self.key}" if self.bucket else None

    def _s3(self) -> Any:
        if self._client is None:
            from cryosnake.aws import s3

            self._client = s3.client()
        return self._client

    def _errors(self, what: str) -> AbstractContextManager[None]:
        """One-line errors ``<what> checkpoint s3://...: <reason>`` for the S3 calls inside."""
        from cryosnake.aws import s3

        return s3.s3_errors(f"{what} checkpoint {self.url}")

    def restore(self) -> bool:
        """Download the S3 checkpoint when the local folder holds none; True if it did."""
        if not self.bucket or self.local.exists():
            return False
        self.local.parent.mkdir(parents=True, exist_ok=True)
        partial = self.local.with_name(f".{self.local.name}.download")
        try:
            with self._errors("cannot read"):
                self._s3().download_file(self.bucket, self.key, str(partial))
        except CryosnakeError as err:
            from cryosnake.aws import s3

            partial.unlink(missing_ok=True)
            if s3.is_not_found(err.__cause__):
                return False
            raise
        os.replace(partial, self.local)
        print(f"{self.stage}: checkpoint restored from {self.url}", flush=True)
        return True

    def store(self) -> None:
        """Upload the local checkpoint (after an iteration)."""
        if not self.bucket:
            return
        with self._errors("cannot write"), open(self.local, "rb") as body:
            self._s3().put_object(Bucket=self.bucket, Key=self.key, Body=body)  # one request
        if not self._stored:
            print(f"{self.stage}: checkpoint kept in {self.url} after every iteration", flush=True)
            self._stored = True

    def clear(self) -> None:
        """Delete the S3 checkpoint (the stage's outputs are written)."""
        if not self.bucket:
            return
        with self._errors("cannot delete"):
            self._s3().delete_object(Bucket=self.bucket, Key=self.key)


def scratch_url(storage_prefix: str, rule: str) -> str:
    """Where ``rule`` keeps its checkpoint for a run whose default storage is
    ``storage_prefix`` (``s3://BUCKET/PROJECT``): ``s3://BUCKET/scratch/PROJECT/
    checkpoints/RULE/``, under the bucket's expiring prefix."""
    from cryosnake.aws.s3 import parse_s3_url

    bucket, project = parse_s3_url(storage_prefix)
    parts = [SCRATCH, project.strip("/"), "checkpoints", rule]
    return f"s3://{bucket}/" + posixpath.join(*[p for p in parts if p]) + "/"
