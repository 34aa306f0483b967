"""The user's AWS profile: account values outside the repository.

``cryosnake aws profile --stack NAME`` writes the stack's values, then the shared
settings of the checkout's ``profiles/aws/config.yaml`` (which holds no account data),
into Snakemake's configuration folder, where ``snakemake --profile aws`` finds it.
(The literal command on the Batch stand-in: tests/aws/test_batch_e2e.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cfnlint.decode import decode
from test_infra import MOTO_SKIPS_BUCKET_POLICY, STACK, TEMPLATE, create_stack

from cryosnake import cli
from cryosnake.aws import stack as aws_stack
from cryosnake.errors import FileFormatError

ROOT = Path(__file__).resolve().parents[2]
VALUES = {
    "aws-batch-region": "eu-west-1",
    "aws-batch-job-queue": "arn:aws:batch:eu-west-1:000000000000:job-queue/q",
    "aws-batch-job-role": "arn:aws:iam::000000000000:role/r",
    "storage-s3-region": "eu-west-1",
    "default-storage-prefix": "s3://bkt/proj",
    "container-image": "000000000000.dkr.ecr.eu-west-1.amazonaws.com/cryosnake:0.1.0-gpu",
}


def test_profile_is_the_values_then_the_shared_settings(tmp_path: Path) -> None:
    template = ROOT / aws_stack.PROFILE_TEMPLATE
    path = aws_stack.write_profile(template, tmp_path / "aws", VALUES, "lab")
    assert path == tmp_path / "aws" / "config.yaml"
    written = yaml.safe_load(path.read_text())
    shared = yaml.safe_load(template.read_text())
    assert written == {**VALUES, **shared}
    assert list(written)[: len(VALUES)] == list(VALUES)
    text = path.read_text()
    assert text.startswith("# AWS profile of the cryosnake stack lab")
    assert text.endswith(template.read_text())
    # Written again with other values: the previous profile is kept beside it.
    other = {**VALUES, "default-storage-prefix": "s3://bkt/other"}
    aws_stack.write_profile(template, tmp_path / "aws", other, "lab")
    assert (tmp_path / "aws" / "config.yaml.bak").read_text() == text
    assert yaml.safe_load(path.read_text())["default-storage-prefix"] == "s3://bkt/other"


def test_template_with_account_data_is_refused(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text("executor: aws-batch\naws-batch-job-queue: arn:old\n")
    with pytest.raises(
        FileFormatError, match=r"template\.yaml: holds the account value aws-batch-job-queue"
    ):
        aws_stack.write_profile(template, tmp_path / "aws", VALUES, "lab")
    assert not (tmp_path / "aws").exists()
    with pytest.raises(
        FileFormatError, match=r"nope\.yaml: no such file \(run in the workflow's checkout"
    ):
        aws_stack.write_profile(tmp_path / "nope.yaml", tmp_path / "aws", VALUES, "lab")


def test_user_profile_dir_is_where_snakemake_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snakemake.cli import get_profile_dir

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    folder = aws_stack.user_profile_dir()
    assert folder == tmp_path / "config" / "snakemake" / "aws"
    aws_stack.write_profile(ROOT / aws_stack.PROFILE_TEMPLATE, folder, VALUES, "lab")
    monkeypatch.chdir(tmp_path)  # a checkout has no ./aws
    found = get_profile_dir("aws")
    assert found is not None and found[1] == folder / "config.yaml"


@MOTO_SKIPS_BUCKET_POLICY
def test_profile_command_writes_the_user_profile(
    aws_env: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    parsed, matches = decode(str(TEMPLATE))
    assert parsed is not None and not matches
    create_stack(dict(parsed))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(ROOT)
    argv = ["aws", "profile", "--stack", STACK, "--project", "apoferritin", "--no-check"]
    assert cli.main(argv) == 0
    path = tmp_path / "config" / "snakemake" / "aws" / "config.yaml"
    written: dict[str, Any] = yaml.safe_load(path.read_text())
    bucket = boto3.client("s3").list_buckets()["Buckets"][0]["Name"]
    (queue,) = boto3.client("batch").describe_job_queues()["jobQueues"]
    assert written["default-storage-prefix"] == f"s3://{bucket}/apoferritin"
    assert written["aws-batch-job-queue"] == queue["jobQueueArn"]
    assert written["executor"] == "aws-batch"
    out = capsys.readouterr().out
    assert f"{path}:" in out and "snakemake --profile aws" in out
    # --profile-dir and --dry-run
    assert cli.main([*argv, "--profile-dir", str(tmp_path / "p"), "--dry-run"]) == 0
    assert not (tmp_path / "p").exists()
    assert f"snakemake --profile {tmp_path / 'p'}" in capsys.readouterr().out
    # A template that is not there: one line naming it; nothing written.
    code = cli.main([*argv, "--profile-dir", str(tmp_path / "q"), "--template", "nope.yaml"])
    assert code == 1 and not (tmp_path / "q").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.yaml: no such file" in err


def test_values_that_need_quotes_read_back(tmp_path: Path) -> None:
    values = {**VALUES, "aws-batch-region": "yes"}  # a YAML 1.1 boolean if unquoted
    values["container-image"] = "repo:1 # not a comment"
    path = aws_stack.write_profile(ROOT / aws_stack.PROFILE_TEMPLATE, tmp_path, values, "lab")
    written = yaml.safe_load(path.read_text())
    assert {k: written[k] for k in values} == values


def test_missing_stack_is_one_line_error_and_writes_nothing(
    aws_env: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["aws", "profile", "--stack", "nope", "--profile-dir", str(tmp_path / "aws")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("cryosnake aws: error: stack nope: not found")
    assert not (tmp_path / "aws").exists()
