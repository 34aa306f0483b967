"""The execution profiles and the rules' resources they depend on.

Every rule's (threads, mem_mb) pair must be one that snakemake-executor-plugin-aws-batch
keeps as it is: the plugin applies AWS Fargate's vCPU/memory table to EC2 jobs and
silently lowers (or rejects) any other pair. The pairs are read from a dry run of the
whole workflow (with the AWS profile's core count) and checked with the plugin's own
validation. GPU rules must declare both gpu=1 (SLURM, local) and _gpus=1 (the only
GPU resource the AWS Batch executor reads).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake_executor_plugin_aws_batch.batch_job_builder import BatchJobBuilder
from snakemake_interface_common.exceptions import WorkflowError

from cryosnake.aws import stack as aws_stack

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def profile(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text()))


def tiny_config(tmp: Path) -> Path:
    """A config file that simulates two tiny movies under ``tmp`` (every rule runs)."""
    config = {
        "results": str(tmp / "results"),
        "input": {"movies": str(tmp / "data/movies/*.mrc"), "gain": str(tmp / "data/gain.mrc")},
        "simulate": {
            "enabled": True,
            "preset": "tiny",
            "n_movies": 2,
            "out_dir": str(tmp / "data"),
        },
        "class3d": {"classes": 2},  # the optional rule too
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run_jobs(tmp: Path, cores: int) -> dict[str, dict[str, str]]:
    """{rule: {"threads": ..., resource: value}} from a dry run of every rule."""
    path = tiny_config(tmp)
    common = ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp)]
    common += ["--configfile", str(path), "--workflow-profile", "none"]
    cmd = [str(SNAKEMAKE), "-n", "--cores", str(cores), *common]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs: dict[str, dict[str, str]] = {}
    rule = None
    for line in (proc.stdout + proc.stderr).splitlines():
        start = re.match(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if start:
            rule = start.group(1)
            jobs.setdefault(rule, {"threads": "1"})
        elif rule and (match := re.match(r"^\s+threads: (\d+)$", line)):
            jobs[rule]["threads"] = match.group(1)
        elif rule and (match := re.match(r"^\s+resources: (.*)$", line)):
            for item in match.group(1).split(", "):
                key, _, value = item.partition("=")
                jobs[rule][key] = value
    listed = subprocess.run(
        [str(SNAKEMAKE), "--list-rules", *common],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    ).stdout.split()
    # all and cryosnake live's live_* are targets only, not jobs
    targets = {rule for rule in listed if rule == "all" or rule.startswith("live_")}
    assert set(listed) - targets <= set(jobs), "a rule is missing from the dry run"
    return jobs


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return dry_run_jobs(tmp_path_factory.mktemp("resources"), int(profile("aws")["cores"]))


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def plugin_keeps(vcpu: int, mem_mb: int) -> bool:
    """True if the AWS Batch plugin submits (vcpu, mem_mb) unchanged."""
    builder = BatchJobBuilder.__new__(BatchJobBuilder)
    logger = logging.getLogger("cryosnake-test-aws-batch")
    recorder = _Recorder()
    logger.addHandler(recorder)
    builder.logger = logger
    try:
        kept = builder._validate_resources(str(vcpu), str(mem_mb))
    except WorkflowError:
        return False
    finally:
        logger.removeHandler(recorder)
    return kept == (str(vcpu), str(mem_mb)) and not recorder.messages


def test_plugin_check_can_fail() -> None:
    assert plugin_keeps(8, 16384) and plugin_keeps(1, 2048)
    assert not plugin_keeps(8, 60000)  # the example: lowered to 16384
    assert not plugin_keeps(2, 8000) and not plugin_keeps(3, 8192)


def test_every_rule_has_a_pair_the_batch_plugin_keeps(jobs: dict[str, dict[str, str]]) -> None:
    for rule, resources in jobs.items():
        if rule == "all":  # a local rule: never submitted
            continue
        assert "mem_mb" in resources, rule
        pair = (int(resources["threads"]), int(resources["mem_mb"]))
        assert plugin_keeps(*pair), (
            f"rule {rule}: (threads, mem_mb) {pair} is changed by the plugin"
        )


def test_gpu_rules_declare_both_gpu_resources(jobs: dict[str, dict[str, str]]) -> None:
    gpu_rules = {rule for rule, res in jobs.items() if "gpu" in res or "_gpus" in res}
    assert "motioncor" in gpu_rules
    for rule in gpu_rules:
        assert jobs[rule].get("gpu") == "1" and jobs[rule].get("_gpus") == "1", rule


def test_jobs_fit_their_instances_and_timeout(jobs: dict[str, dict[str, str]]) -> None:
    """Memory of GPU rules: at most 3.5 GiB per thread, so that an 8-thread job fits the
    32 GiB of a g5.2xlarge / g6.2xlarge as ECS offers it (a little under 32768 MiB; CPU
    rules also have the r6i family, 8 GiB per vCPU). Time: the Batch job timeout exceeds
    every rule's runtime (minutes)."""
    timeout = int(profile("aws")["aws-batch-task-timeout"])
    for rule, resources in jobs.items():
        if rule == "all":
            continue
        if "_gpus" in resources:
            assert int(resources["mem_mb"]) <= 3584 * int(resources["threads"]), rule
        assert int(resources.get("runtime", 0)) * 60 < timeout, rule


def test_aws_profile_settings() -> None:
    aws = profile("aws")
    assert aws["executor"] == "aws-batch"
    assert aws["default-storage-provider"] == "s3"
    assert int(aws["aws-batch-task-timeout"]) >= 3600  # the plugin's default is 300 s
    assert int(aws["retries"]) >= 1
    # A chunk of movies is one job: no group is split into further jobs.
    assert "group-components" not in aws
    # No account data: `cryosnake aws profile` writes it into the user's own profile.
    assert not set(aws) & set(aws_stack.PROFILE_KEYS)
    # Nothing in the profile is a credential.
    text = (ROOT / "profiles" / "aws" / "config.yaml").read_text()
    assert not re.search(r"(?i)(access.?key|secret|token|password)\s*:", text)


def test_default_profile_does_not_override_remote_profiles() -> None:
    # profiles/default is read as the workflow profile of every run, and wins.
    default = profile("default")
    for key in ("cores", "jobs", "executor", "default-resources", "set-resources", "resources"):
        assert key not in default, key


def test_slurm_profile_dry_run(tmp_path: Path) -> None:
    slurm = profile("slurm")
    assert slurm["executor"] == "slurm"
    assert "group-components" not in slurm
    path = tiny_config(tmp_path)
    proc = subprocess.run(
        [str(SNAKEMAKE), "--profile", "profiles/slurm", "-n", "--configfile", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "motioncor" in proc.stdout
