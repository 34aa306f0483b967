"""`snakemake --profile aws` end to end, against moto on 127.0.0.1.

The account is made as a user makes it: moto's CloudFormation creates the stack of
infra/cryosnake.yaml (with test_infra.create_stack's moto-only changes), and
`cryosnake aws profile --stack`, run in a user's checkout (Snakefile, rules/, config/
and profiles/ in a git repository of its own), writes the user's profile into
Snakemake's configuration folder (here $XDG_CONFIG_HOME/snakemake/aws), where the
literal `snakemake --profile aws` finds it from the checkout. The workflow then runs
with that profile and the endpoint override only: jobs are submitted to moto's AWS
Batch by snakemake-executor-plugin-aws-batch, each job runs as a local subprocess
(tests/aws/batchfake.py) that fetches its inputs from the moto bucket through
snakemake-storage-plugin-s3 and uploads its outputs there. The tests of this module
share one fake account and run in order: dry run, S3 keys refused, full run,
nothing-to-do, a forced rerun of ctf (project main, whose third movie is truncated);
then spot reclaims in projects of their own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pytest
import requests
import starfile
import yaml
from batchfake import FakeDocker, Launch
from cfnlint.decode import decode
from snakemake_executor_plugin_aws_batch.constant import VALID_RESOURCES_MAPPING
from snakemake_output import job_counts
from test_infra import MOTO_SKIPS_BUCKET_POLICY, TEMPLATE, create_stack

from cryosnake import cli
from cryosnake.live.ledger import read_events

pytestmark = [pytest.mark.workflow, MOTO_SKIPS_BUCKET_POLICY]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
REGION = "us-east-1"
STACK = "cryosnake-e2e"
SECRET = "e2e-secret-access-key-value"
WORKFLOW_FILES = ["Snakefile", "rules", "config", "profiles"]
GPU_RULES = {"motioncor", "pick", "class2d", "initial3d", "class3d", "refine3d"}


@dataclass
class Account:
    """The fake AWS account of this module and the workflow checkout."""

    endpoint: str
    bucket: str
    docker: FakeDocker
    workflow: Path
    dataset: Path
    s3: Any
    batch: Any

    def objects(self, prefix: str) -> dict[str, dict[str, Any]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return {item["Key"]: item for page in pages for item in page.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def fetch(self, key: str, folder: Path) -> Path:
        path = folder / key.replace("/", "_")
        path.write_bytes(self.read(key))
        return path

    def upload_dataset(self, project: str, truncated: str | None = None) -> None:
        """The simulated movies and gain -> s3://BUCKET/PROJECT with `cryosnake upload`.

        With ``truncated``, a movie of that name is added: the first half of a good one.
        """
        movies = self.dataset / "movies"
        if truncated is not None:
            copy = self.workflow.parent / f"{project}-movies"
            shutil.copytree(movies, copy)
            body = (copy / "movie_0002.mrc").read_bytes()
            (copy / f"{truncated}.mrc").write_bytes(body[: len(body) // 2])
            movies = copy
        url = f"s3://{self.bucket}/{project}"
        for args in ([movies, f"{url}/movies"], [self.dataset / "gain.mrc", url]):
            assert cli.main(["upload", *map(str, args), "--raw-movies", "--quiet"]) == 0

    def snakemake(self, project: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`snakemake --profile aws` with the endpoint override only.

        Project "main" is the one `cryosnake aws profile` wrote into the profile; the
        others are given on the command line.
        """
        cmd = [str(BIN / "snakemake"), "--profile", "aws"]
        cmd += ["--storage-s3-endpoint-url", self.endpoint]
        if project != "main":
            cmd += ["--default-storage-prefix", f"s3://{self.bucket}/{project}"]
        cmd += args
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run(
            cmd, cwd=self.workflow, env=env, capture_output=True, text=True, timeout=600
        )
        proc.stdout += proc.stderr  # snakemake reports on both; the tests read both
        return proc


def make_workflow_checkout(dest: Path, dataset_config: dict[str, Any]) -> Path:
    """A user's checkout: the workflow files in a git repository, a session's config.

    The config is the one value docs/aws.md asks for (``input.movies``, relative to the
    storage prefix) plus the acquisition of the session (and no simulated dataset).
    """
    dest.mkdir(parents=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name)
        else:
            shutil.copy2(src, dest / name)
    config_path = dest / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["simulate"]["enabled"] = False
    config["input"].update({"movies": "movies/*.mrc", "gain": "gain.mrc"})
    config["acquisition"].update(dataset_config)
    # Tiny micrographs (as tests/workflow's tiny_config): every CTF fit accepted,
    # boxes that leave a few particles clear of the edges, two classes, no 3D.
    config["curate"]["max_resolution"] = 0
    config["extract"]["box"] = 80
    config["class2d"].update({"classes": 2, "iterations": 3})
    config["map3d"] = False  # a handful of particles: no map
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    git = ["git", "-c", "user.name=cryosnake", "-c", "user.email=tests@cryosnake.invalid"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "checkout"]):
        subprocess.run([*git, *args], cwd=dest, check=True, capture_output=True)
    return dest


def wheelhouse() -> Path:
    """Wheels of the storage plugin, as the job image holds them at /opt/wheels."""
    path = ROOT / ".venv" / "wheelhouse"
    if not any(path.glob("snakemake_storage_plugin_s3-*.whl")):
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(path)),
                *("-c", str(ROOT / "envs" / "constraints.txt"), "snakemake-storage-plugin-s3"),
            ],
            check=True,
        )
    return path


@pytest.fixture(scope="module")
def account(
    moto_endpoint: str, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Account]:
    import boto3
    from moto.utilities.docker_utilities import DockerModel

    root = tmp_path_factory.mktemp("aws-e2e")
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("AWS_", "SNAKEMAKE_STORAGE_S3_")):
                mp.delenv(name)
        # The submitting machine's credentials (a user's, with a secret of its own).
        mp.setenv("AWS_ACCESS_KEY_ID", "AKIAE2ETESTINGUSER01")
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_ENDPOINT_URL", moto_endpoint)
        mp.setenv("AWS_CONFIG_FILE", "/dev/null")
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        requests.post(f"{moto_endpoint}/moto-api/reset", timeout=30).raise_for_status()
        # What the job image and the instance's role give every job (not the job
        # definition): the image's PATH and wheels, the role's credentials.
        image_env = {
            "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
            "LANG": "C.UTF-8",
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": str(wheelhouse()),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "AWS_ACCESS_KEY_ID": "ASIAINSTANCEROLE0001",
            "AWS_SECRET_ACCESS_KEY": "instance-role-session-secret",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": moto_endpoint,
        }
        docker = FakeDocker(root / "containers", image_env)
        mp.setattr(DockerModel, "docker_client", property(lambda self: docker))

        template, matches = decode(str(TEMPLATE))
        assert template is not None and not matches
        outputs = create_stack(dict(template), STACK)
        s3 = boto3.client("s3")
        batch = boto3.client("batch")
        params = yaml.safe_load((tiny_dataset / "simulation.yaml").read_text())["parameters"]
        acquisition = {
            "pixel_size": params["pixel_size"],
            "dose_per_frame": params["dose_per_frame"],
            "voltage": params["voltage"],
            "cs": params["cs"],
            "amplitude_contrast": params["amplitude_contrast"],
        }
        workflow = make_workflow_checkout(root / "checkout", acquisition)
        # The user's Snakemake configuration folder; the profile is written from the
        # checkout's template, and the checkout itself holds no account data.
        mp.setenv("XDG_CONFIG_HOME", str(root / "user-config"))
        with pytest.MonkeyPatch.context() as here:
            here.chdir(workflow)
            assert cli.main(["aws", "profile", "--stack", STACK, "--project", "main"]) == 0
        profile = yaml.safe_load((root / "user-config/snakemake/aws/config.yaml").read_text())
        assert profile["default-storage-prefix"] == f"s3://{outputs['BucketName']}/main"
        assert "aws-batch-job-queue" not in yaml.safe_load(
            (workflow / "profiles/aws/config.yaml").read_text()
        )
        yield Account(
            moto_endpoint, outputs["BucketName"], docker, workflow, tiny_dataset, s3, batch
        )


def stack_outputs(account: Account) -> dict[str, str]:
    import boto3

    (stack,) = boto3.client("cloudformation").describe_stacks(StackName=STACK)["Stacks"]
    return {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}


def launches_since(account: Account, start: int) -> list[Launch]:
    return account.docker.launches[start:]


def job_definitions(account: Account) -> list[dict[str, Any]]:
    pages = account.batch.get_paginator("describe_job_definitions").paginate()
    return [d for page in pages for d in page["jobDefinitions"]]


def test_dry_run_submits_nothing(account: Account) -> None:
    # The two simulated movies and a third one, truncated (the first half of a good one).
    account.upload_dataset("main", truncated="movie_0003")
    proc = account.snakemake("main", "-n")
    assert proc.returncode == 0, proc.stdout[-3000:]
    stats = job_counts(proc.stdout)
    # The three movies are one chunk: one job of each per-movie stage.
    assert stats["motioncor"] == 1 and stats["ctf"] == 1 and stats["curate"] == 1
    # A dry run keeps no chunk table.
    assert "main/results/chunks.tsv" not in account.objects("main/")
    assert account.docker.launches == []
    assert job_definitions(account) == []


def test_s3_keys_are_refused(account: Account) -> None:
    """S3 keys given to Snakemake would be copied into every job definition: the
    workflow stops before it submits anything."""
    proc = account.snakemake(
        "main", "--storage-s3-access-key", "AKIAE2ETESTINGUSER01", "--storage-s3-secret-key", SECRET
    )
    assert proc.returncode != 0
    assert "cryosnake: --storage-s3-access-key, --storage-s3-secret-key given" in proc.stdout
    assert account.docker.launches == [] and job_definitions(account) == []


def test_end_to_end_on_batch(account: Account, tmp_path: Path) -> None:
    """The full run, with one truncated movie among three: inspect rejects it with its
    reason, no job fails (so no retry redoes a movie), and the run goes on to the end
    with the two good movies; rejected.tsv names the truncated one."""
    proc = account.snakemake("main", "--retries", "0")
    assert proc.returncode == 0, proc.stdout[-5000:]
    results = account.objects("main/results/")
    for name in (
        "movies.star",
        "micrographs_ctf.star",
        "micrographs_selected.star",
        "particles.star",
        "class2d/run_classes.mrcs",
        "particles_selected.star",
        "report.html",
    ):
        assert f"main/results/{name}" in results
    assert "main/results/chunks.tsv" in results  # the three movies are chunk0001
    for movie in ("movie_0001", "movie_0002"):
        for path in (
            f"micrographs/chunk0001/{movie}.mrc",
            f"motioncor/chunk0001/{movie}.star",
            f"ctf/chunk0001/{movie}.star",
        ):
            assert f"main/results/{path}" in results, path
    star = tmp_path / "micrographs_ctf.star"
    star.write_bytes(account.read("main/results/micrographs_ctf.star"))
    ctf = starfile.read(star)
    assert len(ctf["micrographs"]) == 2
    made = [k for k in results if "movie_0003" in k and not re.search("/(inspect|logs)/", k)]
    assert made == []
    rejected = tmp_path / "rejected.tsv"
    rejected.write_bytes(account.read("main/results/rejected.tsv"))
    rows = [line.split("\t") for line in rejected.read_text().splitlines()[1:]]
    inspect_rows = [row for row in rows if row[-1] == "inspect"]
    assert len(inspect_rows) == 1 and inspect_rows[0][0].endswith("movies/movie_0003.mrc")
    assert "movie_0003.mrc" in inspect_rows[0][1]
    # File names inside STAR files are the workflow's paths, as in a local run, not
    # those of the jobs' local copies of S3 (.snakemake/storage/...).
    star = tmp_path / "particles.star"
    star.write_bytes(account.read("main/results/particles.star"))
    names = starfile.read(star)["particles"]["rlnImageName"]
    assert len(names) > 0
    assert all(name.split("@")[1].startswith("results/extract/chunk0001/movie_") for name in names)
    micrograph = "main/results/micrographs/chunk0001/movie_0001.mrc"
    with mrcfile.open(account.fetch(micrograph, tmp_path)) as mrc:
        assert mrc.data.ndim == 2
    # class2d kept its checkpoint under the bucket's scratch/ prefix after every iteration
    # and deleted it once it had finished.
    log = account.read("main/results/logs/class2d.log").decode()
    kept = f"s3://{account.bucket}/scratch/main/checkpoints/class2d/run_checkpoint.npz"
    assert f"class2d: checkpoint kept in {kept} after every iteration" in log
    assert not account.objects("scratch/")

    launches = account.docker.launches
    assert all(launch.returncode == 0 for launch in launches)
    # Per-movie work arrives as one job per chunk (the three movies are one chunk): the
    # checks, then motioncor, ctf, pick and extract as one group job.
    for name in ("inspect", "preprocess"):
        chunked = [launch for launch in launches if name in launch.name]
        assert len(chunked) == 1, name
        assert "chunk0001" in " ".join(chunked[0].command), name
    # inspect, the preprocess group, import_movies, curate, merge_particles, class2d,
    # select2d, report
    assert len(launches) == 8

    definitions = job_definitions(account)
    assert len(definitions) == len(launches)
    for definition in definitions:
        props = definition["containerProperties"]
        needs = {r["type"]: int(r["value"]) for r in props["resourceRequirements"]}
        name = definition["jobDefinitionName"]
        # GPU requirement exactly for the jobs that contain a GPU rule.
        has_gpu_rule = any(rule in name for rule in GPU_RULES)
        assert ("GPU" in needs) == has_gpu_rule, name
        # The (vCPU, memory) pair is one the plugin keeps as it is.
        assert needs["VCPU"] in VALID_RESOURCES_MAPPING.get(needs["MEMORY"], []), name
        # No credential or secret in the job definition: the job role grants access.
        text = json.dumps(definition)
        assert SECRET not in text and "AKIAE2ETESTINGUSER01" not in text
        for variable in props["environment"]:
            assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD", variable["name"]), variable
        assert props["jobRoleArn"] == stack_outputs(account)["JobRoleArn"]


def test_status_and_cost_of_the_run(account: Account, capsys: pytest.CaptureFixture[str]) -> None:
    """`cryosnake aws status` and `cryosnake aws cost` on the stand-in's Batch jobs of
    the full run: every stage's jobs succeeded, and each has a price."""
    assert cli.main(["aws", "status", "--stack", STACK]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for stage in ("import_movies", "curate", "merge_particles", "class2d", "select2d", "report"):
        assert stage in rows, out
    assert any(name.startswith("inspect") for name in rows), out
    assert any(name.startswith("preprocess") for name in rows), out
    assert "FAILED" in out and "SUCCEEDED" in out
    assert cli.main(["aws", "cost", "--stack", STACK, "--project", "main"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    # The GPU rules' jobs are priced on GPU instances, the others on CPU instances.
    for stage, row in rows.items():
        if stage.startswith(("preprocess", "class2d")):
            assert row[3].startswith(("g5.", "g6.")), row
        elif stage.startswith(("inspect", "import_movies", "curate", "report")):
            assert row[3].startswith(("c6i.", "m6i.", "r6i.")), row
    assert "per 1,000 movies (3 movies in" in out, out
    assert re.search(r"/main/: .* per month", out), out


def test_second_run_has_nothing_to_do(account: Account) -> None:
    before = len(account.docker.launches)
    proc = account.snakemake("main")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Nothing to be done" in proc.stdout
    assert len(account.docker.launches) == before


def test_forcerun_ctf_reruns_ctf_and_what_depends_on_it(account: Account) -> None:
    before = len(account.docker.launches)
    objects = account.objects("main/results/")
    proc = account.snakemake("main", "--forcerun", "ctf")
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert job_counts(proc.stdout) == {
        "all": 1,
        "ctf": 1,
        "pick": 1,
        "extract": 1,
        "curate": 1,
        "merge_particles": 1,
        "class2d": 1,
        "select2d": 1,
        "report": 1,
        "total": 9,
    }
    new = launches_since(account, before)
    assert len(new) == 6 and all(launch.returncode == 0 for launch in new)
    assert not any("motioncor" in launch.name or "inspect" in launch.name for launch in new)
    # A job asks for a GPU exactly when it holds a GPU rule (the group: pick; not ctf).
    definitions = job_definitions(account)
    for launch in new:
        definition = next(
            d
            for d in definitions
            if launch.name.startswith(d["jobDefinitionName"].replace("snakejob-def-", "snakejob-"))
        )
        kinds = {r["type"] for r in definition["containerProperties"]["resourceRequirements"]}
        assert ("GPU" in kinds) == any(rule in launch.name for rule in GPU_RULES), launch.name
    after = account.objects("main/results/")
    for movie in ("movie_0001", "movie_0002"):
        # The motion-corrected micrographs are read from S3, not made again.
        key = f"main/results/micrographs/chunk0001/{movie}_noDW.mrc"
        assert after[key]["LastModified"] == objects[key]["LastModified"]
        key = f"main/results/ctf/chunk0001/{movie}.star"
        assert after[key]["LastModified"] > objects[key]["LastModified"]


def test_reclaimed_job_is_retried_and_completes(account: Account, tmp_path: Path) -> None:
    account.upload_dataset("reclaim")
    reclaimed: list[Launch] = []
    in_s3_at_kill: list[str] = []

    def reclaim(launch: Launch) -> bool:
        # Kill the first group job once motioncor has written a micrograph in it.
        if reclaimed or "preprocess" not in launch.name:
            return False
        if any(launch.workdir.rglob("reclaim/results/micrographs/chunk*/*.mrc")):
            reclaimed.append(launch)
            in_s3_at_kill.extend(account.objects("reclaim/results/micrographs/"))
            return True
        return False

    account.docker.containers.reclaim = reclaim
    before = len(account.docker.launches)
    try:
        proc = account.snakemake("reclaim")
    finally:
        account.docker.containers.reclaim = None
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert len(reclaimed) == 1 and reclaimed[0].killed
    # The micrograph written in the container had not reached S3: outputs are sent
    # only once their job has finished.
    assert in_s3_at_kill == []
    assert "Trying to restart job" in proc.stdout
    grouped = [launch for launch in launches_since(account, before) if "preprocess" in launch.name]
    assert [launch.returncode for launch in grouped] == [137, 0]
    results = account.objects("reclaim/results/")
    expected = account.objects("main/results/")
    assert {k.split("/", 1)[1] for k in results} >= {
        k.split("/", 1)[1] for k in expected if not re.search("/(logs|benchmarks)/|movie_0003", k)
    }
    for key in results:
        if key.endswith(".mrc"):
            with mrcfile.open(account.fetch(key, tmp_path)) as mrc:
                assert mrc.data.ndim == 2, key


def test_reclaimed_class2d_resumes_from_its_s3_checkpoint(account: Account, tmp_path: Path) -> None:
    """A spot reclaim in class2d's second iteration: the resubmitted job, in a fresh
    container, restores the checkpoint from the bucket's scratch/ prefix and goes on
    after the last finished iteration, to the classes of the uninterrupted run of the
    same data (project main)."""
    account.upload_dataset("spot")
    key = "scratch/spot/checkpoints/class2d/run_checkpoint.npz"
    reclaimed: list[Launch] = []

    def reclaim(launch: Launch) -> bool:
        if reclaimed or "class2d" not in launch.name:
            return False
        if key in account.objects("scratch/spot/"):  # iteration 1 is done
            reclaimed.append(launch)
            return True
        return False

    account.docker.containers.reclaim = reclaim
    before = len(account.docker.launches)
    try:
        proc = account.snakemake("spot")
    finally:
        account.docker.containers.reclaim = None
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert len(reclaimed) == 1 and reclaimed[0].killed
    runs = [
        launch.returncode for launch in launches_since(account, before) if "class2d" in launch.name
    ]
    assert runs == [137, 0]
    log = account.read("spot/results/logs/class2d.log").decode()
    assert f"class2d: checkpoint restored from s3://{account.bucket}/{key}" in log, log
    assert "starting over" not in log, log
    resumed = re.search(r"resuming from .* after iteration (\d+)", log)
    assert resumed is not None and int(resumed.group(1)) >= 1, log
    assert "iteration 1/" not in log
    assert not account.objects("scratch/spot/")
    classes = []
    for project in ("main", "spot"):
        path = account.fetch(f"{project}/results/class2d/run_classes.mrcs", tmp_path)
        with mrcfile.open(path) as mrc:
            classes.append(np.array(mrc.data))
    np.testing.assert_allclose(classes[1], classes[0], atol=1e-5)


def _per_movie_jobs(launches: list[Launch]) -> list[tuple[str, str]]:
    """(chunk, job name) of the per-movie jobs among ``launches`` (inspect, and the
    group job of motioncor, ctf, pick and extract), in launch order."""
    jobs = []
    for launch in launches:
        if "inspect" in launch.name or "preprocess" in launch.name:
            chunks = set(re.findall(r"chunk\d{4}", " ".join(launch.command)))
            assert len(chunks) == 1, (launch.name, chunks)
            jobs.append((chunks.pop(), launch.name))
    return jobs


@pytest.mark.slow  # two sessions on the fake Batch: 4 min; make test-slow
def test_live_session_on_batch(account: Account, tmp_path: Path) -> None:
    """`cryosnake live --profile aws` in the user's checkout, on a folder the movies
    arrive in one after another: each is uploaded (checked) into the project's staging
    folder, processed by Batch jobs, and the session ends with the whole workflow; the
    ledger is kept in S3 beside the results. Started again when one more movie has come,
    it processes that movie only."""
    project = "live"
    url = f"s3://{account.bucket}/{project}"
    assert cli.main(["upload", str(account.dataset / "gain.mrc"), url, "--quiet"]) == 0
    watch = tmp_path / "scope"
    watch.mkdir()
    movies = sorted((account.dataset / "movies").glob("*.mrc"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    command = [
        str(BIN / "cryosnake"), "live", "--watch", str(watch), "--profile", "aws",
        "--settle", "1", "--chunk-period", "2", "--class2d-every", "1",
        "--stop-after-idle", "0.1", "--poll", "0.5", "--",
        "--storage-s3-endpoint-url", account.endpoint, "--default-storage-prefix", url,
    ]  # fmt: skip

    def session(arrivals: list[Path]) -> list[Launch]:
        before = len(account.docker.launches)
        proc = subprocess.Popen(
            command, cwd=account.workflow, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for movie in arrivals:  # the microscope writes them a few seconds apart
            time.sleep(3)
            shutil.copy(movie, watch / movie.name)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-5000:]
        return launches_since(account, before)

    first = session(movies)
    results = account.objects(f"{project}/results/")
    for movie in movies:
        key = f"{project}/results/live/movies/{movie.name}"
        assert account.read(key) == movie.read_bytes()
        assert account.s3.head_object(Bucket=account.bucket, Key=key)["Metadata"]["sha256"]
    for name in ("micrographs_selected.star", "particles.star", "report.html"):
        assert f"{project}/results/{name}" in results, name
    assert all(launch.returncode == 0 for launch in first)
    assert [chunk for chunk, _ in _per_movie_jobs(first)] == ["chunk0001", "chunk0001"]
    # Restarted on a new machine (no local ledger), with one more movie.
    shutil.rmtree(account.workflow / "results")
    late = tmp_path / "late" / "movie_0009.mrc"
    late.parent.mkdir()
    shutil.copy(movies[0], late)
    second = session([late])
    assert [chunk for chunk, _ in _per_movie_jobs(second)] == ["chunk0002", "chunk0002"]
    ledger = tmp_path / "events.tsv"
    ledger.write_bytes(account.read(f"{project}/results/live/events.tsv"))
    events = read_events(ledger)
    every = sorted(m.stem for m in [*movies, late])
    assert sorted(events.query("event == 'processed'")["movie"]) == every
    assert (events.query("event != 'cycle'").groupby(["event", "movie"]).size() == 1).all()
    kinds = [d.split()[0] for d in events.query("event == 'cycle'")["detail"]]
    assert kinds.count("final") == 2 and kinds[-1] == "final" and "chunks" in kinds
    results = account.objects(f"{project}/results/")
    for stem in every:
        assert any(k.endswith(f"/{stem}.star") and "/ctf/chunk" in k for k in results), stem
