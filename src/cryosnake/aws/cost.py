"""What the stack's jobs and data cost: ``cryosnake aws cost``.

An estimate from a price table (``prices.yaml`` beside this module: per region and
instance type vCPUs, memory, GPUs, on-demand and typical spot $ per hour, and S3 $ per
GB-month; its ``as_of`` and ``source`` say where the figures come from). A job's cost is
its run time (``startedAt`` to ``stoppedAt``, a running job's up to now) times the hourly
price of the cheapest instance type that fits its vCPUs, memory and GPUs among the
types the stack allows (its parameters ``GpuInstanceTypes`` and ``CpuInstanceTypes``).
That is neither the bill nor the instance Batch chose: several jobs packed on one
instance make the true cost lower, instance time without a job (start-up, idle minutes
before Batch scales down) makes it higher, and spot prices change by the hour. The cost
per 1,000 movies divides by the movies of the project (its inspect reports);
storage is the bytes under ``s3://BUCKET/PROJECT/`` and the scratch prefix per month at
the table's price of each storage class (current versions only).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cryosnake.aws.jobs import (
    Job,
    describe_resources,
    list_jobs,
    queue_name,
    text_table,
    utc_text,
)
from cryosnake.errors import CryosnakeError

__all__ = [
    "PRICES",
    "InstancePrice",
    "PriceTable",
    "allowed_types",
    "cheapest_fit",
    "cost_lines",
    "job_cost_table",
    "job_hours",
    "load_prices",
    "movie_count",
    "prefix_bytes",
    "storage_month_cost",
]

#: The price table shipped with cryosnake.
PRICES = "prices.yaml"

#: Price modes: the column of the price table used.
PRICING = ("spot", "on-demand")

_GIB = 2.0**30


@dataclass(frozen=True)
class InstancePrice:
    """An instance type of the price table."""

    name: str
    vcpus: int
    memory_mib: int
    gpus: int
    on_demand: float  # $ per hour
    spot: float  # $ per hour, typical

    def hourly(self, pricing: str) -> float:
        """$ per hour for ``pricing`` (``spot`` or ``on-demand``)."""
        return self.spot if pricing == "spot" else self.on_demand

    def fits(self, job: Job) -> bool:
        """Whether the job's vCPUs, memory and GPUs fit this type (nominal memory)."""
        return (
            job.vcpus <= self.vcpus and job.memory_mib <= self.memory_mib and job.gpus <= self.gpus
        )


@dataclass(frozen=True)
class PriceTable:
    """The prices of one region, and where they come from."""

    region: str
    path: str
    as_of: str
    instances: dict[str, InstancePrice]
    storage: dict[str, float]  # S3 storage class -> $ per GB-month


def load_prices(region: str, path: str | Path | None = None) -> PriceTable:
    """The prices of ``region`` from ``path`` (default: the table shipped, :data:`PRICES`).

    Raises
    ------
    CryosnakeError
        The file cannot be read or has no (valid) entry for the region.
    """
    if path is None:
        source = resources.files("cryosnake.aws").joinpath(PRICES)
        where = str(source)
    else:
        source = Path(path)
        where = str(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise CryosnakeError(f"{where}: cannot read the price table ({err})") from err
    regions = data.get("regions") if isinstance(data, dict) else None
    if not isinstance(regions, dict):
        raise CryosnakeError(f"{where}: not a price table (no regions)")
    if region not in regions:
        known = ", ".join(sorted(regions)) or "none"
        raise CryosnakeError(f"no prices for region {region} in {where} (it has: {known})")
    entry = regions[region] or {}
    try:
        instances = {
            name: InstancePrice(
                name,
                int(row["vcpus"]),
                int(row["memory_mib"]),
                int(row.get("gpus", 0)),
                float(row["on_demand"]),
                float(row["spot"]),
            )
            for name, row in (entry.get("instances") or {}).items()
        }
        storage = {str(k): float(v) for k, v in (entry.get("s3_gb_month") or {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CryosnakeError(f"{where}: region {region}: bad entry ({err!r})") from err
    return PriceTable(region, where, str(data.get("as_of", "unknown date")), instances, storage)


def allowed_types(parameters: Mapping[str, str], table: PriceTable) -> list[InstancePrice]:
    """The priced instance types the stack's compute environments may launch.

    ``GpuInstanceTypes`` and ``CpuInstanceTypes`` hold types (``g5.2xlarge``) or
    families (``c6i``: every size of it in the table).

    Raises
    ------
    CryosnakeError
        A parameter is missing, or a type or family has no price in the table.
    """
    found: dict[str, InstancePrice] = {}
    for key in ("GpuInstanceTypes", "CpuInstanceTypes"):
        if not parameters.get(key):
            raise CryosnakeError(f"stack parameter {key} missing (deploy infra/cryosnake.yaml)")
        # "a,b" from CloudFormation; "['a', 'b']" (a list's text) from stand-ins
        for name in (t.strip(" '\"[]") for t in parameters[key].split(",")):
            if not name:
                continue
            if "." in name:
                matches = [table.instances[name]] if name in table.instances else []
            else:
                matches = [p for n, p in table.instances.items() if n.split(".")[0] == name]
            if not matches:
                raise CryosnakeError(
                    f"instance type {name} (stack parameter {key}): no price for region "
                    f"{table.region} in {table.path}"
                )
            found.update((p.name, p) for p in matches)
    return list(found.values())


def cheapest_fit(job: Job, types: Sequence[InstancePrice], pricing: str) -> InstancePrice:
    """The type of ``types`` with the lowest ``pricing`` price that fits the job."""
    fitting = [t for t in types if t.fits(job)]
    if not fitting:
        raise CryosnakeError(
            f"job {job.name} ({job.vcpus:g} vCPUs, {job.memory_mib} MiB, {job.gpus} GPUs): "
            "no priced instance type of the stack fits it"
        )
    return min(fitting, key=lambda t: (t.hourly(pricing), t.name))


def job_hours(job: Job, now: float) -> float:
    """Hours the job ran: ``startedAt`` to ``stoppedAt`` (or now); 0 if it never started."""
    if job.started is None:
        return 0.0
    end = job.stopped if job.stopped is not None else now
    return max(0.0, end - job.started) / 3600.0


@dataclass
class _Stage:
    jobs: int = 0
    hours: float = 0.0
    dollars: float = 0.0


def job_cost_table(
    jobs: Sequence[Job], types: Sequence[InstancePrice], pricing: str, now: float
) -> tuple[list[str], float]:
    """Table of the jobs that ran: per stage the jobs, hours, instance types and $;
    and the total $."""
    stages: dict[str, _Stage] = {}
    kinds: dict[str, dict[str, None]] = {}
    for job in jobs:
        if job.started is None:
            continue
        instance = cheapest_fit(job, types, pricing)
        hours = job_hours(job, now)
        row = stages.setdefault(job.stage, _Stage())
        row.jobs += 1
        row.hours += hours
        row.dollars += hours * instance.hourly(pricing)
        kinds.setdefault(job.stage, {})[instance.name] = None
    total = _Stage(
        sum(s.jobs for s in stages.values()),
        sum(s.hours for s in stages.values()),
        sum(s.dollars for s in stages.values()),
    )
    rows = [
        [name, str(s.jobs), f"{s.hours:,.2f}", ",".join(kinds.get(name, {})), f"{s.dollars:,.2f}"]
        for name, s in [*stages.items(), ("total", total)]
    ]
    return text_table(["stage", "jobs", "hours", "instance", "$"], rows), total.dollars


def _objects(s3: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """The objects (current versions) under ``prefix``."""
    import botocore.exceptions

    out: list[dict[str, Any]] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
    except botocore.exceptions.ClientError as err:
        code = err.response.get("Error", {}).get("Code", "error")
        raise CryosnakeError(f"cannot list s3://{bucket}/{prefix} ({code})") from err
    except botocore.exceptions.BotoCoreError as err:
        raise CryosnakeError(f"cannot list s3://{bucket}/{prefix} ({err})") from err
    return out


def movie_count(s3: Any, bucket: str, project: str) -> int:
    """Movies of a project: its inspect reports ``PROJECT/results/inspect/CHUNK/*.json``
    (or ``inspect/*.json``, as runs before chunks wrote them)."""
    prefix = f"{project.strip('/')}/results/inspect/"
    names = (o["Key"][len(prefix) :] for o in _objects(s3, bucket, prefix))
    return sum(1 for n in names if n.endswith(".json") and n.count("/") <= 1)


def prefix_bytes(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Bytes under ``prefix`` per storage class (current object versions)."""
    out: dict[str, int] = {}
    for item in _objects(s3, bucket, prefix):
        kind = item.get("StorageClass", "STANDARD")
        out[kind] = out.get(kind, 0) + int(item.get("Size", 0))
    return out


def storage_month_cost(sizes: Mapping[str, int], table: PriceTable) -> tuple[float, list[str]]:
    """$ per month of ``sizes`` (storage class -> bytes; GB = 2^30 bytes) and the
    storage classes the table has no price for."""
    dollars = sum(n / _GIB * table.storage[k] for k, n in sizes.items() if k in table.storage)
    return dollars, sorted(k for k, n in sizes.items() if n and k not in table.storage)


def _storage_line(s3: Any, bucket: str, prefix: str, table: PriceTable) -> str:
    sizes = prefix_bytes(s3, bucket, prefix)
    dollars, unpriced = storage_month_cost(sizes, table)
    parts = ", ".join(f"{n / _GIB:,.1f} GiB {k}" for k, n in sorted(sizes.items()))
    missing = f" ({', '.join(unpriced)} not priced in {table.path})" if unpriced else ""
    return f"s3://{bucket}/{prefix}: {parts or 'empty'}: ${dollars:,.2f} per month{missing}"


def cost_lines(
    batch: Any,
    s3: Any,
    *,
    outputs: Mapping[str, str],
    parameters: Mapping[str, str],
    table: PriceTable,
    stack: str,
    project: str,
    since: float,
    pricing: str = "spot",
    now: float | None = None,
) -> list[str]:
    """The report of ``cryosnake aws cost``: $ per stage and in total of the jobs of the
    stack's queue created since ``since``, $ per 1,000 movies, and S3 storage a month.

    Parameters
    ----------
    batch, s3 : boto3 clients of the stack's region
    outputs, parameters : the stack's outputs (:func:`cryosnake.aws.stack.stack_outputs`)
        and parameters (:func:`cryosnake.aws.quotas.stack_parameters`)
    table : prices of the stack's region (:func:`load_prices`)
    stack, project : stack name, and key prefix of the project's data in the bucket
    since : start of the window, epoch seconds
    pricing : ``spot`` or ``on-demand``
    now : the time running jobs are priced up to (default: now)
    """
    if pricing not in PRICING:
        raise CryosnakeError(f"--pricing {pricing!r}: use spot or on-demand")
    now = time.time() if now is None else now
    types = allowed_types(parameters, table)
    queue = outputs["JobQueueArn"]
    ran = [job for job in list_jobs(batch, queue, since) if job.started is not None]
    lines = [
        f"cost of the jobs of queue {queue_name(queue)} (stack {stack}) created since "
        f"{utc_text(since)}, at {pricing} prices of {table.region} ({table.path}, as of "
        f"{table.as_of}); each job on the cheapest instance type of the stack that fits it:"
    ]
    total = 0.0
    if ran:
        rows, total = job_cost_table(describe_resources(batch, ran), types, pricing, now)
        lines += rows
    else:
        lines.append("no job ran in that time")
    bucket, project = outputs["BucketName"], project.strip("/")
    movies = movie_count(s3, bucket, project)
    if movies:
        lines.append(
            f"${total / movies * 1000:,.2f} per 1,000 movies ({movies:,} movies in "
            f"s3://{bucket}/{project}/results/inspect/)"
        )
    else:
        lines.append(f"no movies in s3://{bucket}/{project}/results/inspect/: no $ per movie")
    scratch = parameters.get("ScratchPrefix", "scratch/").strip("/")
    lines.append(_storage_line(s3, bucket, f"{project}/", table))
    lines.append(_storage_line(s3, bucket, f"{scratch}/{project}/", table))
    lines.append(
        "an estimate: jobs packed on one instance cost less, idle instance time and spot "
        "price changes more or less; the AWS bill (Cost Explorer) has the true cost"
    )
    return lines
