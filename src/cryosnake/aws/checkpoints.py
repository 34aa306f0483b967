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
            from cryosnake.aws.transfer import parse_s3_url  # boto3: the aws extra

            self.bucket, prefix = parse_s3_url(url)
            self.key = posixpath.join(prefix, self.local.name) if prefix else self.local.name

    @property
    def url(self) -> str | None:
        return f"s3://{self.bucket}/{self.key}" if self.bucket else None

    def _s3(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3")
        return self._client

    def _fail(self, err: Exception, what: str) -> CryosnakeError:
        import botocore.exceptions

        detail = str(err)
        if isinstance(err, botocore.exceptions.ClientError):
            error = err.response.get("Error", {})
            detail = f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
        return CryosnakeError(f"{what} checkpoint {self.url}: {detail}")

    def restore(self) -> bool:
        """Download the S3 checkpoint when the local folder holds none; True if it did."""
        import botocore.exceptions

        if not self.bucket or self.local.exists():
            return False
        self.local.parent.mkdir(parents=True, exist_ok=True)
        partial = self.local.with_name(f".{self.local.name}.download")
        try:
            self._s3().download_file(self.bucket, self.key, str(partial))
        except botocore.exceptions.ClientError as err:
            partial.unlink(missing_ok=True)
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail(err, "cannot read") from err
        except botocore.exceptions.BotoCoreError as err:
            partial.unlink(missing_ok=True)
            raise self._fail(err, "cannot read") from err
        os.replace(partial, self.local)
        print(f"{self.stage}: checkpoint restored from {self.url}", flush=True)
        return True

    def store(self) -> None:
        """Upload the local checkpoint (after an iteration)."""
        import botocore.exceptions

        if not self.bucket:
            return
        try:
            with open(self.local, "rb") as body:  # one request: a checkpoint is small
                self._s3().put_object(Bucket=self.bucket, Key=self.key, Body=body)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as err:
            raise self._fail(err, "cannot write") from err
        if not self._stored:
            print(f"{self.stage}: checkpoint kept in {self.url} after every iteration", flush=True)
            self._stored = True

    def clear(self) -> None:
        """Delete the S3 checkpoint (the stage's outputs are written)."""
        import botocore.exceptions

        if not self.bucket:
            return
        try:
            self._s3().delete_object(Bucket=self.bucket, Key=self.key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as err:
            raise self._fail(err, "cannot delete") from err


def scratch_url(storage_prefix: str, rule: str) -> str:
    """Where ``rule`` keeps its checkpoint for a run whose default storage is
    ``storage_prefix`` (``s3://BUCKET/PROJECT``): ``s3://BUCKET/scratch/PROJECT/
    checkpoints/RULE/``, under the bucket's expiring prefix."""
    from cryosnake.aws.transfer import parse_s3_url

    bucket, project = parse_s3_url(storage_prefix)
    parts = [SCRATCH, project.strip("/"), "checkpoints", rule]
    return f"s3://{bucket}/" + posixpath.join(*[p for p in parts if p]) + "/"
