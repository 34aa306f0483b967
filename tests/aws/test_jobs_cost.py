"""``cryosnake aws status`` and ``cryosnake aws cost``.

moto's Batch runs no jobs, so the Batch and CloudFormation clients are real boto3
clients with botocore's Stubber (no request leaves the process), answering with jobs in
known states and times. S3 listings come from moto (movie count, bytes under a prefix)
or from a Stubber where the report needs sizes of many GiB. Prices come from a small
test table whose figures make every $ below easy to check by hand.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from cryosnake import cli
from cryosnake.aws import cost, jobs
from cryosnake.errors import CryosnakeError

REGION = "eu-west-1"
STACK = "cryosnake-cost"
QUEUE = f"arn:aws:batch:{REGION}:123456789012:job-queue/cryosnake-queue"
BUCKET = "lab-data"
T0 = 1_790_000_000.0  # "now" of the tests, epoch seconds
SINCE = T0 - 24 * 3600
PARAMETERS = {"GpuInstanceTypes": "gx.2xl,gx.4xl,gy.2xl", "CpuInstanceTypes": "cx,mx",
              "ScratchPrefix": "scratch/"}  # fmt: skip
OUTPUTS = {"Region": REGION, "BucketName": BUCKET, "JobQueueArn": QUEUE, "JobRoleArn": "role",
           "RepositoryUri": "repository", "LogGroupName": "/aws/batch/job"}  # fmt: skip
# name: (vCPUs, MiB, GPUs, on-demand, spot). gy.2xl: cheaper on demand, dearer on spot
# than gx.2xl. zz.large is cheapest of all but not allowed by the stack.
PRICES = {
    "gx.2xl": (8, 32768, 1, 1.00, 0.40), "gx.4xl": (16, 65536, 1, 1.60, 0.60),
    "gy.2xl": (8, 32768, 1, 0.90, 0.45), "cx.large": (2, 4096, 0, 0.10, 0.04),
    "cx.xlarge": (4, 8192, 0, 0.20, 0.08), "mx.large": (2, 8192, 0, 0.12, 0.05),
    "zz.large": (2, 4096, 0, 0.01, 0.001),
}  # fmt: skip
PREPROCESS = "preprocess_ctf_extract_motioncor_pick"


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    keys = ("vcpus", "memory_mib", "gpus", "on_demand", "spot")
    rows = {name: dict(zip(keys, row, strict=True)) for name, row in PRICES.items()}
    storage = {"STANDARD": 0.02, "DEEP_ARCHIVE": 0.001}
    regions = {REGION: {"s3_gb_month": storage, "instances": rows}}
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"as_of": "2026-01-01", "source": "test", "regions": regions}))
    return path


def client(service: str) -> Any:
    return boto3.client(
        service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y"
    )


def summary(stage: str, status: str, created_ago: float,
            ran: tuple[float, float | None] | None = None, reason: str = "",
            needs: tuple[int, int, int] = (8, 28672, 1)) -> dict[str, Any]:  # fmt: skip
    """A job summary of ``stage`` created ``created_ago`` s before T0, run from ``ran[0]`` to
    ``ran[1]`` h after (None: running), asking for ``needs`` (vCPUs, MiB, GPUs)."""
    item: dict[str, Any] = {
        "jobId": str(uuid.uuid4()),
        "jobName": f"snakejob-{stage}-{uuid.uuid4()}",
        "status": status,
        "createdAt": int((T0 - created_ago) * 1000),
        "needs": needs,
    }
    if ran is not None:
        item["startedAt"] = int((T0 - created_ago + ran[0] * 3600) * 1000)
        if ran[1] is not None:
            item["stoppedAt"] = int((T0 - created_ago + ran[1] * 3600) * 1000)
    if reason:
        item["statusReason"] = reason
    return item


def batch_client(
    pages: list[list[dict[str, Any]]], since: float = SINCE, describe: bool = False
) -> tuple[Any, Stubber]:
    """A Batch client listing ``pages`` of job summaries, then (``describe``) describing
    the jobs that ran with the resources they asked for."""
    batch = client("batch")
    stub = Stubber(batch)
    after = [{"name": "AFTER_CREATED_AT", "values": [str(int(since * 1000))]}]
    params: dict[str, Any] = {"jobQueue": QUEUE, "filters": after}
    for number, page in enumerate(pages):
        summaries = [{k: v for k, v in job.items() if k != "needs"} for job in page]
        response: dict[str, Any] = {"jobSummaryList": summaries}
        if number + 1 < len(pages):
            response["nextToken"] = f"page{number + 1}"
        stub.add_response("list_jobs", response, dict(params))
        params["nextToken"] = f"page{number + 1}"
    ran = sorted((j for page in pages for j in page if "startedAt" in j),
                 key=lambda j: (j["createdAt"], j["jobId"]))  # fmt: skip
    details = []
    for job in ran:
        needs = [{"type": t, "value": str(n)} for t, n in zip(("VCPU", "MEMORY", "GPU"),
                 job["needs"], strict=True) if n]  # fmt: skip
        detail = {k: job[k] for k in ("jobId", "jobName", "status", "startedAt")}
        container = {"resourceRequirements": needs}
        details.append({**detail, "jobQueue": QUEUE, "jobDefinition": "d", "container": container})
    if describe:
        stub.add_response("describe_jobs", {"jobs": details}, {"jobs": [j["jobId"] for j in ran]})
    stub.activate()
    return batch, stub


def stack_client(calls: int = 1) -> Any:
    cf = client("cloudformation")
    stub = Stubber(cf)
    stack = {
        "StackName": STACK, "CreationTime": "2026-01-01", "StackStatus": "UPDATE_COMPLETE",
        "Outputs": [{"OutputKey": k, "OutputValue": v} for k, v in OUTPUTS.items()],
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in PARAMETERS.items()],
    }  # fmt: skip
    for _ in range(calls):
        stub.add_response("describe_stacks", {"Stacks": [stack]}, {"StackName": STACK})
    stub.activate()
    return cf


def s3_client(listings: list[tuple[str, list[tuple[str, int, str]]]]) -> tuple[Any, Stubber]:
    """An S3 client answering list_objects_v2 for (prefix, [(key, size, class)]) in order."""
    s3 = client("s3")
    stub = Stubber(s3)
    for prefix, objects in listings:
        contents = [{"Key": k, "Size": n, "StorageClass": c} for k, n, c in objects]
        response = {"Contents": contents, "IsTruncated": False}
        stub.add_response("list_objects_v2", response, {"Bucket": BUCKET, "Prefix": prefix})
    stub.activate()
    return s3, stub


def report(batch: Any, s3: Any, table: Path, project: str, **kw: Any) -> list[str]:
    return cost.cost_lines(batch, s3, outputs=OUTPUTS, parameters=PARAMETERS, stack=STACK,
                           table=cost.load_prices(REGION, table), project=project,
                           since=SINCE, now=T0, **kw)  # fmt: skip


def job(vcpus: float, mib: int, gpus: int) -> jobs.Job:
    return jobs.Job("1", "j", "RUNNING", T0, None, None, "", vcpus, mib, gpus)


# ------------------------------------------------------------------ job names, status


def test_stage_of_rule_and_group_names() -> None:
    u = "0f8c2a4e-1b2c-4d3e-8f9a-0123456789ab"
    assert jobs.stage_of(f"snakejob-merge_particles-{u}") == "merge_particles"
    assert jobs.stage_of(f"snakejob-{PREPROCESS}-{u}") == PREPROCESS
    assert jobs.stage_of(f"snakejob-my-group-2_a_b-{u}") == "my-group-2_a_b"
    assert jobs.stage_of(f"snakejob-x-{u}-{u}") == f"x-{u}"
    assert jobs.stage_of("my-own-job") == "my-own-job"  # not the executor's: as it is
    assert jobs.stage_of(f"snakejob-refine3d-{u[:-1]}") == f"snakejob-refine3d-{u[:-1]}"
    assert jobs.queue_name(QUEUE) == "cryosnake-queue"


def test_since_time() -> None:
    assert jobs.since_time("2026-03-01T08:00+00:00", 24) == 1_772_352_000.0
    assert jobs.since_time("2026-03-01T09:00+01:00", 24) == 1_772_352_000.0
    assert jobs.since_time(None, 2, now=T0) == T0 - 7200
    with pytest.raises(CryosnakeError, match=r"--since 'yesterday': not an ISO 8601 time"):
        jobs.since_time("yesterday", 24)


STATUS_JOBS = [
    summary(PREPROCESS, "SUCCEEDED", 7200, (0.01, 0.5)),
    summary(PREPROCESS, "SUCCEEDED", 7000, (0.01, 0.5)),
    summary(PREPROCESS, "RUNNING", 3600, (0.1, None)),
    summary(PREPROCESS, "RUNNABLE", 25 * 60),
    summary("inspect_inspect", "SUCCEEDED", 9000, (0.01, 0.2)),
    summary("inspect_inspect", "FAILED", 8000, (0.01, 0.2), "Essential container in task exited"),
    summary("refine3d", "RUNNABLE", 5 * 60),
    summary("refine3d", "SUBMITTED", 10),
]


def test_status_table_and_hints() -> None:
    batch, stub = batch_client([STATUS_JOBS[:5], STATUS_JOBS[5:]])
    lines = jobs.status_lines(batch, QUEUE, STACK, SINCE, now=T0)
    stub.assert_no_pending_responses()
    assert lines[0] == (
        f"jobs of queue cryosnake-queue (stack {STACK}) created since {jobs.utc_text(SINCE)}:"
    )
    assert lines[1].split() == ["stage", *jobs.JOB_STATES, "total"]
    # stages in order of their first job's creation
    rows = [line.split() for line in lines[2:6]]
    assert rows == [
        ["inspect_inspect", "0", "0", "0", "0", "0", "1", "1", "2"],
        [PREPROCESS, "0", "0", "1", "0", "1", "2", "0", "4"],
        ["refine3d", "1", "0", "1", "0", "0", "0", "0", "2"],
        ["total", "1", "0", "2", "0", "1", "3", "1", "8"],
    ]
    runnable, failed = STATUS_JOBS[3]["jobId"], STATUS_JOBS[5]["jobId"]
    assert lines[6].startswith(f"RUNNABLE for 25 min: {PREPROCESS} (job {runnable}): no ")
    assert lines[6].endswith(f"run cryosnake aws check --stack {STACK}")
    assert lines[7] == f"FAILED inspect_inspect (job {failed}): Essential container in task exited"
    assert len(lines) == 8  # the refine3d job RUNNABLE for 5 min gets no hint


def test_failed_jobs_are_listed_up_to_20() -> None:
    lines = jobs.failure_lines([jobs.Job(str(i), f"job{i}", "FAILED", T0) for i in range(23)])
    assert len(lines) == 21 and lines[0] == "FAILED job0 (job 0): no reason given"
    assert lines[-1] == "... and 3 more failed job(s)"


def test_status_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    since = "2026-09-21T00:00:00+00:00"
    batch, stub = batch_client([[]], since=jobs.since_time(since, 24))
    clients = {"cloudformation": stack_client(), "batch": batch}
    monkeypatch.setattr(boto3, "client", lambda service, **kw: clients[service])
    assert cli.main(["aws", "status", "--stack", STACK, "--since", since]) == 0
    stub.assert_no_pending_responses()
    head = f"no jobs of queue cryosnake-queue (stack {STACK}) created since 2026-09-21 00:00 UTC"
    assert capsys.readouterr().out == head + "\n"


def test_status_without_region_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    assert cli.main(["aws", "status", "--stack", STACK]) == 1
    err = capsys.readouterr().err
    assert err == "cryosnake aws: error: no AWS region: pass --region or set AWS_REGION\n"


# ------------------------------------------------------------------ prices, cost


def test_cheapest_fitting_type(price_file: Path) -> None:
    table = cost.load_prices(REGION, price_file)
    types = cost.allowed_types(PARAMETERS, table)
    assert sorted(t.name for t in types) == sorted(set(PRICES) - {"zz.large"})

    def pick(vcpus: float, mib: int, gpus: int, pricing: str) -> str:
        return cost.cheapest_fit(job(vcpus, mib, gpus), types, pricing).name

    assert pick(8, 28672, 1, "spot") == "gx.2xl"
    assert pick(8, 28672, 1, "on-demand") == "gy.2xl"
    assert pick(8, 40000, 1, "spot") == "gx.4xl"
    assert pick(2, 2048, 0, "spot") == "cx.large"  # not zz.large: the stack does not allow it
    assert pick(2, 6144, 0, "spot") == "mx.large"
    assert pick(4, 4096, 0, "spot") == "cx.xlarge"
    with pytest.raises(CryosnakeError, match=r"job j \(8 vCPUs, 28672 MiB, 2 GPUs\): no priced"):
        pick(8, 28672, 2, "spot")


COST_JOBS = [
    # preprocess: 2 h and (running) 0.5 h on gx.2xl (spot 0.40): $1.00
    summary(PREPROCESS, "SUCCEEDED", 10 * 3600, (1, 3)),
    summary(PREPROCESS, "RUNNING", 3600, (0.5, None)),
    # refine3d, 40000 MiB: 3 h on gx.4xl (spot 0.60), reclaimed: $1.80
    summary("refine3d", "FAILED", 8 * 3600, (1, 4), "Host EC2 terminated", (8, 40000, 1)),
    # inspect: 0.5 h on cx.large (0.04) + 1 h on mx.large (0.05): $0.07
    summary("inspect_inspect", "SUCCEEDED", 12 * 3600, (0.1, 0.6), needs=(2, 2048, 0)),
    summary("inspect_inspect", "SUCCEEDED", 11 * 3600, (0.1, 1.1), needs=(2, 6144, 0)),
    summary("refine3d", "RUNNABLE", 60),  # never ran: costs nothing
]
GIB = 2**30
INSPECT = "proj/results/inspect/"
LISTINGS = [  # 4 movies (not the .png, not two folders below)
    (INSPECT, [(f"{INSPECT}{name}", 100, "STANDARD") for name in
               ("m0.json", "chunk0001/m1.json", "chunk0001/m2.json", "m3.json", "m0.png",
                "old/x/m9.json")]),
    ("proj/", [("proj/movies/a.tiff", 1000 * GIB, "DEEP_ARCHIVE"),
               ("proj/results/big.mrcs", 50 * GIB, "STANDARD")]),
    ("scratch/proj/", []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pricing", "stage_dollars", "total", "per_1000"),
    [
        ("spot", ["0.07", "1.00", "1.80"], "2.87", "717.50"),
        # on demand: cx.large 0.10 x 0.5 h + mx.large 0.12 x 1 h (cheaper than cx.xlarge
        # at 0.20), gy.2xl 0.90 x 2.5 h, gx.4xl 1.60 x 3 h
        ("on-demand", ["0.17", "2.25", "4.80"], "7.22", "1,805.00"),
    ],
)
def test_cost_report(
    price_file: Path, pricing: str, stage_dollars: list[str], total: str, per_1000: str
) -> None:
    batch, batch_stub = batch_client([COST_JOBS[:3], COST_JOBS[3:]], describe=True)
    s3, s3_stub = s3_client(LISTINGS)
    lines = report(batch, s3, price_file, "proj", pricing=pricing)
    batch_stub.assert_no_pending_responses()
    s3_stub.assert_no_pending_responses()
    assert lines[0].startswith("cost of the jobs of queue cryosnake-queue (stack cryosnake-cost)")
    assert f"at {pricing} prices of {REGION} ({price_file}, as of 2026-01-01)" in lines[0]
    assert lines[1].split() == ["stage", "jobs", "hours", "instance", "$"]
    rows = [line.split() for line in lines[2:6]]
    spot = pricing == "spot"
    assert rows == [
        ["inspect_inspect", "2", "1.50", "cx.large,mx.large", stage_dollars[0]],
        [PREPROCESS, "2", "2.50", "gx.2xl" if spot else "gy.2xl", stage_dollars[1]],
        ["refine3d", "1", "3.00", "gx.4xl", stage_dollars[2]],
        ["total", "5", "7.00", total],
    ]
    assert lines[6] == f"${per_1000} per 1,000 movies (4 movies in s3://{BUCKET}/{INSPECT})"
    # 1000 GiB x 0.001 + 50 GiB x 0.02 (+ 600 bytes) per month
    sizes = "1,000.0 GiB DEEP_ARCHIVE, 50.0 GiB STANDARD"
    assert lines[7] == f"s3://{BUCKET}/proj/: {sizes}: $2.00 per month"
    assert lines[8] == f"s3://{BUCKET}/scratch/proj/: empty: $0.00 per month"
    assert lines[9].startswith("an estimate: jobs packed on one instance cost less")


def test_movies_and_bytes_in_s3(aws_env: str, price_file: Path) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    for key, size, kind in [
        (f"{INSPECT}chunk0001/a.json", 2, "STANDARD"),
        (f"{INSPECT}chunk0001/b.json", 2, "STANDARD"),
        (f"{INSPECT}chunk0001/b.png", 3, "STANDARD"), (f"{INSPECT}c.json", 2, "STANDARD"),
        (f"{INSPECT}x/y/d.json", 2, "STANDARD"),
        ("projX/results/inspect/e.json", 2, "STANDARD"),
        ("proj/movies/a.tiff", 1000, "DEEP_ARCHIVE"),
    ]:  # fmt: skip
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * size, StorageClass=kind)
    # a.json and b.json in a chunk's folder, c.json of the layout before chunks
    assert cost.movie_count(s3, BUCKET, "proj") == 3
    assert cost.movie_count(s3, BUCKET, "other") == 0
    assert cost.prefix_bytes(s3, BUCKET, "proj/") == {"STANDARD": 11, "DEEP_ARCHIVE": 1000}
    with pytest.raises(CryosnakeError, match=r"cannot list s3://nobucket/proj/ \(NoSuchBucket\)"):
        cost.prefix_bytes(s3, "nobucket", "proj/")
    sizes = {"STANDARD": 50 * GIB, "DEEP_ARCHIVE": 1000 * GIB, "GLACIER_IR": 5 * GIB}
    dollars, unpriced = cost.storage_month_cost(sizes, cost.load_prices(REGION, price_file))
    assert (dollars, unpriced) == (pytest.approx(2.00), ["GLACIER_IR"])


def test_no_movies_skips_the_per_movie_line(price_file: Path) -> None:
    batch, _ = batch_client([[]])
    s3, _ = s3_client([("p/results/inspect/", []), ("p/", []), ("scratch/p/", [])])
    lines = report(batch, s3, price_file, "p")
    assert lines[1] == "no job ran in that time"
    assert lines[2] == f"no movies in s3://{BUCKET}/p/results/inspect/: no $ per movie"


def test_missing_prices_are_one_line_errors(price_file: Path) -> None:
    message = rf"no prices for region ap-south-1 in {price_file} \(it has: {REGION}\)"
    with pytest.raises(CryosnakeError, match=message):
        cost.load_prices("ap-south-1", price_file)
    table = cost.load_prices(REGION, price_file)
    for key, types, name in [("GpuInstanceTypes", "gx.2xl,g9.xlarge", "g9.xlarge"),
                             ("CpuInstanceTypes", "cx,c7a", "c7a")]:  # fmt: skip
        with pytest.raises(CryosnakeError) as err:
            cost.allowed_types({**PARAMETERS, key: types}, table)
        where = f"no price for region {REGION} in {price_file}"
        assert str(err.value) == f"instance type {name} (stack parameter {key}): {where}"
    with pytest.raises(CryosnakeError, match="cannot read the price table"):
        cost.load_prices(REGION, price_file.with_name("none.yaml"))


def test_cost_cli_region_without_prices(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The shipped table has no eu-west-1: one line naming the region and the file."""
    clients = {"cloudformation": stack_client()}
    monkeypatch.setattr(boto3, "client", lambda service, **kw: clients[service])
    assert cli.main(["aws", "cost", "--stack", STACK]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cryosnake aws: error: no prices for region {REGION} in ")
    assert err.endswith("prices.yaml (it has: us-east-1)\n") and err.count("\n") == 1


def test_cost_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], price_file: Path
) -> None:
    since = "2026-09-21T00:00:00+00:00"
    ran = [summary("refine3d", "SUCCEEDED", 3600, (0, 0.5))]
    batch, _ = batch_client([ran], since=jobs.since_time(since, 24), describe=True)
    s3, s3_stub = s3_client(LISTINGS)
    clients = {"cloudformation": stack_client(calls=2), "batch": batch, "s3": s3}
    monkeypatch.setattr(boto3, "client", lambda service, **kw: clients[service])
    argv = ["aws", "cost", "--stack", STACK, "--since", since, "--project", "proj"]
    assert cli.main([*argv, "--prices", str(price_file), "--pricing", "on-demand"]) == 0
    s3_stub.assert_no_pending_responses()
    out = capsys.readouterr().out.splitlines()
    assert out[2].split() == ["refine3d", "1", "0.50", "gy.2xl", "0.45"]
    assert out[4] == f"$112.50 per 1,000 movies (4 movies in s3://{BUCKET}/{INSPECT})"


def test_shipped_table_prices_the_template_defaults() -> None:
    """Every default instance type of infra/cryosnake.yaml has a price in us-east-1."""
    template = (Path(__file__).resolve().parents[2] / "infra" / "cryosnake.yaml").read_text()
    defaults = {}
    for key in ("GpuInstanceTypes", "CpuInstanceTypes"):
        block = template.split(f"\n  {key}:\n", 1)[1]
        defaults[key] = block.split("Default: ", 1)[1].split("\n", 1)[0].strip()
    table = cost.load_prices("us-east-1")
    assert table.as_of and table.path.endswith("prices.yaml")
    types = cost.allowed_types(defaults, table)
    assert cost.cheapest_fit(job(8, 28672, 1), types, "spot").name == "g6.2xlarge"
    assert cost.cheapest_fit(job(2, 2048, 0), types, "on-demand").name == "c6i.large"
    assert table.instances["g5.2xlarge"].on_demand == 1.212
    assert table.storage["STANDARD"] == 0.023
