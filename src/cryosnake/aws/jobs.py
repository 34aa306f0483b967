"""The Batch jobs of the stack's queue, per stage: ``cryosnake aws status``.

The aws-batch executor names every job ``snakejob-NAME-UUID``, where NAME is the
rule's name or, for a group job, Snakemake's name of the group job (the group id, then
``_`` and its rules in alphabetical order, e.g. ``preprocess_ctf_extract_motioncor_pick``).
:func:`stage_of` reads NAME back; it is the row of the tables here and in
:mod:`cryosnake.aws.cost`. :func:`list_jobs` reads the jobs of the queue created since a
time (one listing of every state: ``list_jobs`` with the ``AFTER_CREATED_AT`` filter,
which returns jobs of any status), :func:`describe_resources` adds the vCPUs, memory
and GPUs each job asked for, and :func:`status_lines` prints the table of jobs per
stage and state, the jobs that wait RUNNABLE too long and the reasons of failed jobs.
Batch keeps finished jobs for a limited time only, so older runs drop out of it.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from cryosnake.errors import CryosnakeError

__all__ = [
    "JOB_STATES",
    "RUNNABLE_HINT_SECONDS",
    "Job",
    "add_window_args",
    "describe_resources",
    "failure_lines",
    "list_jobs",
    "queue_name",
    "runnable_lines",
    "since_time",
    "stage_of",
    "status_lines",
    "status_table",
    "text_table",
    "utc_text",
]

#: Batch job states, in the order a job passes them.
JOB_STATES: tuple[str, ...] = (
    "SUBMITTED",
    "PENDING",
    "RUNNABLE",
    "STARTING",
    "RUNNING",
    "SUCCEEDED",
    "FAILED",
)

#: A job RUNNABLE for longer than this gets a line with a hint (capacity or quota).
RUNNABLE_HINT_SECONDS = 600

#: Failed jobs listed with their reason, at most.
MAX_FAILURES = 20

_JOB_NAME = re.compile(
    r"snakejob-(?P<name>.+)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)


@dataclass(frozen=True)
class Job:
    """A Batch job as the status and cost reports see it (times in epoch seconds)."""

    job_id: str
    name: str
    status: str
    created: float
    started: float | None = None
    stopped: float | None = None
    reason: str = ""
    vcpus: float = 0.0
    memory_mib: int = 0
    gpus: int = 0

    @property
    def stage(self) -> str:
        """The rule or group name of the job (:func:`stage_of`)."""
        return stage_of(self.name)


def stage_of(job_name: str) -> str:
    """The rule or group name in a job name ``snakejob-NAME-UUID``; other names as they are.

    Examples
    --------
    >>> stage_of("snakejob-merge_particles-0f8c2a4e-1b2c-4d3e-8f9a-0123456789ab")
    'merge_particles'
    """
    match = _JOB_NAME.fullmatch(job_name)
    return match["name"] if match else job_name


def queue_name(queue: str) -> str:
    """The name of a job queue given by name or ARN (``...:job-queue/NAME``)."""
    return queue.rsplit("/", 1)[-1]


def utc_text(epoch: float) -> str:
    """``YYYY-MM-DD HH:MM UTC`` of a time in epoch seconds."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def since_time(since: str | None, hours: float, now: float | None = None) -> float:
    """Start of the time window in epoch seconds: ``since`` (ISO 8601; without an
    offset, local time) or else ``hours`` before ``now``."""
    if since is None:
        return (time.time() if now is None else now) - hours * 3600.0
    try:
        moment = datetime.fromisoformat(since.strip())
    except ValueError as err:
        raise CryosnakeError(
            f"--since {since!r}: not an ISO 8601 time (e.g. 2026-03-01T08:00 or "
            "2026-03-01T08:00+00:00)"
        ) from err
    return moment.timestamp() if moment.tzinfo else moment.astimezone().timestamp()


def add_window_args(parser: argparse.ArgumentParser) -> None:
    """The options ``--since`` and ``--hours`` of the time window (see :func:`since_time`)."""
    from cryosnake.stages._common import positive

    window = parser.add_mutually_exclusive_group()
    window.add_argument(
        "--since",
        default=None,
        help="jobs created since this time, ISO 8601 (2026-03-01T08:00, local time without "
        "an offset)",
    )
    window.add_argument(
        "--hours",
        type=positive,
        default=24.0,
        help="jobs created in the last HOURS hours (default %(default)g)",
    )


def _seconds(millis: Any) -> float | None:
    return None if millis is None else float(millis) / 1000.0


def _reason(summary: dict[str, Any]) -> str:
    container = summary.get("container") or {}
    parts = [str(summary.get("statusReason") or "").strip()]
    if container.get("reason"):
        parts.append(str(container["reason"]).strip())
    if container.get("exitCode") is not None:
        parts.append(f"exit code {container['exitCode']}")
    return "; ".join(p for p in parts if p)


def _batch_error(what: str, err: Exception) -> CryosnakeError:
    import botocore.exceptions

    if isinstance(err, botocore.exceptions.ClientError):
        message = err.response.get("Error", {}).get("Message", str(err))
        return CryosnakeError(f"{what}: {message}")
    return CryosnakeError(f"{what}: {err}")


def list_jobs(batch: Any, queue: str, since: float) -> list[Job]:
    """The jobs of ``queue`` created at or after ``since`` (epoch seconds), in any state.

    Parameters
    ----------
    batch : a boto3 Batch client
    queue : name or ARN of the job queue
    since : start of the window, epoch seconds

    Returns
    -------
    the jobs, oldest first, without their resources (see :func:`describe_resources`)
    """
    import botocore.exceptions

    filters = [{"name": "AFTER_CREATED_AT", "values": [str(int(since * 1000))]}]
    jobs: list[Job] = []
    try:
        for page in batch.get_paginator("list_jobs").paginate(jobQueue=queue, filters=filters):
            for item in page.get("jobSummaryList", []):
                created = _seconds(item.get("createdAt")) or 0.0
                if created < since:
                    continue
                jobs.append(
                    Job(
                        job_id=item["jobId"],
                        name=item["jobName"],
                        status=item.get("status", "SUBMITTED"),
                        created=created,
                        started=_seconds(item.get("startedAt")),
                        stopped=_seconds(item.get("stoppedAt")),
                        reason=_reason(item),
                    )
                )
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as err:
        raise _batch_error(f"job queue {queue_name(queue)}", err) from err
    return sorted(jobs, key=lambda job: (job.created, job.job_id))


def _resources(detail: dict[str, Any]) -> tuple[float, int, int]:
    """(vCPUs, memory MiB, GPUs) a job detail asked for."""
    container = detail.get("container") or {}
    values = {r["type"]: r["value"] for r in container.get("resourceRequirements", [])}
    vcpus = float(values.get("VCPU", container.get("vcpus", 0)) or 0)
    memory = int(float(values.get("MEMORY", container.get("memory", 0)) or 0))
    gpus = int(float(values.get("GPU", 0) or 0))
    return vcpus, memory, gpus


def describe_resources(batch: Any, jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` with the vCPUs, memory (MiB) and GPUs each asked for (``describe_jobs``,
    100 jobs a call; from the job's definition when the job's own description lacks
    ``resourceRequirements``, as moto's does); jobs Batch no longer describes keep
    zeros."""
    import botocore.exceptions

    found: dict[str, tuple[float, int, int]] = {}
    definitions: dict[str, dict[str, Any]] = {}
    ids = [job.job_id for job in jobs]
    try:
        for first in range(0, len(ids), 100):
            response = batch.describe_jobs(jobs=ids[first : first + 100])
            for detail in response.get("jobs", []):
                container = detail.get("container") or {}
                arn = detail.get("jobDefinition")
                if "resourceRequirements" not in container and arn:
                    if arn not in definitions:
                        described = batch.describe_job_definitions(jobDefinitions=[arn])
                        found_definitions = described.get("jobDefinitions", [])
                        definitions[arn] = (
                            found_definitions[0].get("containerProperties", {})
                            if found_definitions
                            else {}
                        )
                    detail = {**detail, "container": {**definitions[arn], **container}}
                found[detail["jobId"]] = _resources(detail)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as err:
        raise _batch_error("describe jobs", err) from err
    out = []
    for job in jobs:
        if job.job_id in found:
            vcpus, memory, gpus = found[job.job_id]
            job = replace(job, vcpus=vcpus, memory_mib=memory, gpus=gpus)
        out.append(job)
    return out


def text_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as text columns: the first left-aligned, the others right-aligned."""
    rows = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ).rstrip()
        for row in rows
    ]


def status_table(jobs: Sequence[Job]) -> list[str]:
    """Jobs per stage (rows, in order of first appearance) and state (columns), a total
    column and a total line."""
    counts: dict[str, Counter[str]] = {}
    for job in jobs:
        counts.setdefault(job.stage, Counter())[job.status] += 1
    total: Counter[str] = Counter(job.status for job in jobs)
    rows = [
        [stage, *(str(c[state]) for state in JOB_STATES), str(sum(c.values()))]
        for stage, c in [*counts.items(), ("total", total)]
    ]
    return text_table(["stage", *JOB_STATES, "total"], rows)


def runnable_lines(
    jobs: Sequence[Job], stack: str, now: float, after: float = RUNNABLE_HINT_SECONDS
) -> list[str]:
    """One line per job RUNNABLE for more than ``after`` seconds since it was created,
    with the hint to check capacity and quotas."""
    lines = []
    for job in jobs:
        waited = now - job.created
        if job.status == "RUNNABLE" and waited > after:
            why = f" ({job.reason})" if job.reason else ""
            lines.append(
                f"RUNNABLE for {waited / 60:.0f} min: {job.stage} (job {job.job_id}){why}: no "
                "instance capacity or too small an EC2 vCPU quota; run "
                f"cryosnake aws check --stack {stack}"
            )
    return lines


def failure_lines(jobs: Sequence[Job], limit: int = MAX_FAILURES) -> list[str]:
    """One line per FAILED job with its reason, at most ``limit`` and a count of the rest."""
    failed = [job for job in jobs if job.status == "FAILED"]
    lines = [
        f"FAILED {job.stage} (job {job.job_id}): {job.reason or 'no reason given'}"
        for job in failed[:limit]
    ]
    if len(failed) > limit:
        lines.append(f"... and {len(failed) - limit} more failed job(s)")
    return lines


def status_lines(
    batch: Any, queue: str, stack: str, since: float, now: float | None = None
) -> list[str]:
    """The report of ``cryosnake aws status``: the jobs of ``queue`` created since
    ``since`` per stage and state, jobs RUNNABLE too long, and failed jobs' reasons."""
    now = time.time() if now is None else now
    jobs = list_jobs(batch, queue, since)
    head = f"jobs of queue {queue_name(queue)} (stack {stack}) created since {utc_text(since)}"
    if not jobs:
        return [f"no {head}"]
    return [
        f"{head}:",
        *status_table(jobs),
        *runnable_lines(jobs, stack, now),
        *failure_lines(jobs),
    ]
