# Movie discovery, paths and input functions shared by the rules.
import os
import re
import shlex
import sys
import time

from snakemake.exceptions import IncompleteCheckpointException

from cryosnake.config import check_workflow_version, movie_table, simulated_gain
from cryosnake.errors import ConfigError
from cryosnake.stage_args import (
    class2d_args,
    command_line,
    ctf_args,
    curate_args,
    extract_args,
    gain_args,
    import_args,
    initial3d_args,
    inspect_args,
    motioncor_args,
    pick_args,
    postprocess_args,
    refine3d_args,
    select2d_args,
    simulate_args,
)
from cryosnake.stages.import_movies import movie_names

STARTED = time.time()


def s3_storage():
    """(prefix, endpoint, region) of the S3 default storage (profiles/aws), else None."""
    default = workflow.storage_settings
    if default is None or default.default_storage_provider != "s3":
        return None
    settings = workflow.storage_provider_settings.get("s3")
    s3 = settings.get_settings() if settings is not None else None
    return (
        default.default_storage_prefix,
        getattr(s3, "endpoint_url", None),
        getattr(s3, "region", None),
    )


def storage_lister():
    """With S3 as default storage, movies are listed in the bucket (else: local glob)."""
    s3 = s3_storage()
    if s3 is None:
        return None
    from cryosnake.aws.storage import glob_s3

    prefix, endpoint, region = s3
    return lambda pattern: glob_s3(
        prefix, pattern, endpoint_url=endpoint, region=region
    )


def refuse_s3_keys():
    """onstart: stop before any job is submitted to AWS Batch when S3 keys were given to
    Snakemake (--storage-s3-access-key/-secret-key/-token, or their
    SNAKEMAKE_STORAGE_S3_* variables): the executor would copy them in plain text into
    every job definition. Jobs use the stack's job role, and this machine its own AWS
    credentials (environment or ~/.aws)."""
    plugin = workflow.executor_plugin
    if workflow.remote_exec or plugin is None or plugin.name != "aws-batch":
        return
    settings = workflow.storage_provider_settings.get("s3")
    s3 = settings.get_settings() if settings is not None else None
    given = [k for k in ("access_key", "secret_key", "token") if getattr(s3, k, None)]
    if given:
        flags = ", ".join(f"--storage-s3-{k.replace('_', '-')}" for k in given)
        sys.exit(
            f"cryosnake: {flags} given: AWS Batch would copy it in plain text into every "
            "job definition; remove it (and SNAKEMAKE_STORAGE_S3_* variables): jobs use "
            "the stack's job role, this machine its AWS credentials"
        )


def report_stage_errors():
    """After a failed run on S3 storage, print the stage errors of the failed jobs.

    Their log files are in S3, where Snakemake's main process does not look.
    """
    s3 = s3_storage()
    if s3 is None or workflow.remote_exec:
        return
    from cryosnake.aws.storage import stage_errors

    prefix, endpoint, region = s3
    errors = stage_errors(prefix, LOGS, STARTED, endpoint_url=endpoint, region=region)
    if errors:
        print("cryosnake: errors reported by the failed jobs:", file=sys.stderr)
    for url, line in errors:
        print(f"  {line}   [{url}]", file=sys.stderr)


# The version of these rules; the package that runs their stages (this environment,
# or the job image on AWS) must be the same (tests/workflow checks it is pyproject's).
WORKFLOW_VERSION = "0.1.0"

try:
    check_workflow_version(WORKFLOW_VERSION)
except ConfigError as err:
    sys.exit(f"cryosnake: {err}")
try:
    MOVIES = movie_table(config, storage_lister())
except ConfigError as err:
    sys.exit(f"cryosnake: config error: {err}")

# Rules run the `cryosnake` command of the Python that runs snakemake, so that
# .venv/bin/snakemake works without activating .venv (and a job image uses its own).
shell.prefix(f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH; ")

RESULTS = config["results"]
LOGS = f"{RESULTS}/logs"
# Written by the checkpoint import_movies: the movies inspect accepted (one line each),
# and those it rejected, with the reason.
MOVIES_SUMMARY = f"{RESULTS}/movies_summary.tsv"
REJECTED_MOVIES = f"{RESULTS}/movies_rejected.tsv"
BENCHMARKS = f"{RESULTS}/benchmarks"
SIM = config["simulate"]
CONTAINER_CPU = config["containers"]["cpu"]
CONTAINER_GPU = config["containers"]["gpu"]


wildcard_constraints:
    movie="|".join(re.escape(m) for m in MOVIES),


def movie_path(wildcards):
    """The movie file of one movie name."""
    return MOVIES[wildcards.movie]


def gain_input(wildcards):
    """The gain reference, as an input of per-movie rules (none when not configured)."""
    gain = config["input"]["gain"]
    return [] if gain is None else [gain]


def gain_options(wildcards, input):
    """Gain options of inspect and motioncor (none without a gain reference)."""
    return command_line(gain_args(config, input.gain[0] if input.gain else None))


def inspect_reports(wildcards):
    """The inspect report of every movie."""
    return expand(f"{RESULTS}/inspect/{{movie}}.json", movie=MOVIES)


def result_text(path):
    """The text of a result the workflow reads while it plans jobs (in S3 when the
    default storage is S3, else local); None when there is no such file yet."""
    s3 = s3_storage()
    if s3 is None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None
    from cryosnake.aws.storage import read_s3_text

    prefix, endpoint, region = s3
    return read_s3_text(
        prefix, path, endpoint_url=endpoint, region=region, missing_ok=True
    )


def accepted_movies():
    """Names of the movies inspect accepted, from import_movies' tables; None while
    import_movies has not decided on every movie (not run yet, or movies added)."""
    summary, rejected = result_text(MOVIES_SUMMARY), result_text(REJECTED_MOVIES)
    if summary is None or rejected is None:
        return None
    accepted = movie_names(summary, MOVIES_SUMMARY)
    rejected = movie_names(rejected, REJECTED_MOVIES)
    if not set(MOVIES) <= accepted | rejected:
        return None
    return [movie for movie in MOVIES if movie not in rejected]


def per_movie(*patterns):
    """Input function: ``patterns`` (with {movie}) for every movie inspect accepted.

    Until import_movies (a checkpoint) has decided on every movie: the files of every
    movie and the checkpoint's output, so that dry runs and DAG pictures show every job
    and Snakemake plans the job again, without the rejected movies, once import_movies
    has finished. (Once decided, the tables are read directly: a job re-planned after
    a checkpoint makes Snakemake 9.27 rerun the jobs after it in every later run.)
    """

    def files(wildcards):
        movies = accepted_movies()
        if movies is None:
            try:
                checkpoints.import_movies.get()
            except IncompleteCheckpointException as pending:
                return [pending.targetfile, *expand(list(patterns), movie=MOVIES)]
            movies = accepted_movies()
            if movies is None:
                raise ConfigError(
                    f"{REJECTED_MOVIES}: import_movies has run but does not list every movie"
                )
        return expand(list(patterns), movie=movies)

    return files


def simulated_outputs():
    """Files written by `cryosnake simulate` that other rules use."""
    return {
        "movies": list(MOVIES.values()),
        "gain": simulated_gain(config),
        "truth": f"{SIM['out_dir']}/truth/particles.star",
    }


def simulate_out_dir(wildcards, output):
    """Folder of the simulated dataset, from the gain output (works with remote storage)."""
    return os.path.dirname(output.gain)


def output_dir(wildcards, output):
    """Folder of a rule's first output (works with remote storage too)."""
    return os.path.dirname(output[0])


def job_root(logical):
    """params function: the folder the workflow's relative paths start from in a job,
    given to the stages that write file names into STAR files (--names-relative-to).

    ``logical`` is the pattern of the rule's first output. Locally that folder is the
    working directory ("."). With remote storage (profiles/aws) a job sees each file
    under its local copy of the storage prefix (.snakemake/storage/s3/BUCKET/PREFIX/...),
    and the names in the STAR files (rlnImageName, rlnMicrographName) are written
    relative to it, so that they read ``results/extract/m.mrcs`` wherever the job ran.
    """

    def root(wildcards, output):
        local = os.path.normpath(str(output[0]))
        path = os.path.normpath(logical.format(**dict(wildcards.items())))
        if os.path.isabs(path) or local == path:
            return "."
        if not local.endswith(os.sep + path):
            raise ValueError(f"output {local} does not end with {path}")
        return local[: -len(path) - 1]

    return root


def pick_templates(wildcards):
    """The template stack of template picking (none: blob picking)."""
    templates = config["pick"]["templates"]
    return [] if templates is None else [templates]


def pick_options(wildcards, input):
    """Options of `cryosnake pick`, with the template stack as the job sees it."""
    templates = input.templates[0] if input.templates else None
    return command_line(pick_args(config, templates))


def checkpoint_url(rule):
    """With S3 storage, where an iterative stage mirrors its checkpoint (spot-safe
    resume; cryosnake.aws.checkpoints): the bucket's expiring scratch/ prefix."""
    s3 = s3_storage()
    if s3 is None:
        return None
    from cryosnake.aws.checkpoints import scratch_url

    return scratch_url(s3[0], rule)


def refine3d_reference():
    """The map refine3d starts from: initial3d.reference if set, else the ab initio map."""
    reference = config["initial3d"]["reference"]
    return reference if reference else f"{RESULTS}/initial3d/initial_model.mrc"


def config_yaml():
    """The effective configuration (files, --config and defaults), as YAML."""
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False)


# Per-movie pictures the report shows, of the movies inspect accepted.
REPORT_PER_MOVIE = [
    f"{RESULTS}/motioncor/{{movie}}_motion.png",
    f"{RESULTS}/ctf/{{movie}}.png",
    f"{RESULTS}/pick/{{movie}}.png",
]


def report_inputs():
    """Every file the report reads but the per-movie pictures (REPORT_PER_MOVIE): 2D
    results, the rejected movies and micrographs, and 3D results when map3d is on."""
    files = [
        f"{RESULTS}/movies.star",
        REJECTED_MOVIES,
        f"{RESULTS}/rejected.tsv",
        f"{RESULTS}/micrographs_ctf.star",
        f"{RESULTS}/micrographs_selected.star",
        f"{RESULTS}/particles.star",
        f"{RESULTS}/particles_selected.star",
        f"{RESULTS}/class2d/run_model.star",
        f"{RESULTS}/class2d/run_classes.png",
        f"{RESULTS}/class2d/selection.png",
    ]
    if config["map3d"]:
        files += [
            f"{RESULTS}/initial3d/initial_model.png",
            f"{RESULTS}/refine3d/run_angdist.png",
            f"{RESULTS}/refine3d/fsc.star",
            f"{RESULTS}/postprocess/postprocess.star",
            f"{RESULTS}/postprocess/postprocess_fsc.png",
            f"{RESULTS}/postprocess/postprocess_guinier.png",
            f"{RESULTS}/postprocess/postprocess_slices.png",
        ]
    return files


# Per-movie results that the target all asks for, of the movies inspect accepted.
FINAL_PER_MOVIE = [
    *(
        f"{RESULTS}/motioncor/{{movie}}{suffix}"
        for suffix in (".mrc", "_noDW.mrc", ".star", "_motion.png")
    ),
    f"{RESULTS}/ctf/{{movie}}.png",
    f"{RESULTS}/pick/{{movie}}.png",
]


def final_targets():
    """Everything `rule all` asks for but FINAL_PER_MOVIE."""
    maps = (
        [
            f"{RESULTS}/initial3d/initial_model.png",
            f"{RESULTS}/refine3d/run_angdist.png",
            f"{RESULTS}/postprocess/postprocess.mrc",
        ]
        if config["map3d"]
        else []
    )
    return [
        f"{RESULTS}/report.html",
        *maps,
        f"{RESULTS}/movies.star",
        f"{RESULTS}/movies_summary.tsv",
        REJECTED_MOVIES,
        *expand(f"{RESULTS}/inspect/{{movie}}.png", movie=MOVIES),
        f"{RESULTS}/micrographs_ctf.star",
        f"{RESULTS}/micrographs_selected.star",
        f"{RESULTS}/rejected.tsv",
        f"{RESULTS}/particles.star",
        f"{RESULTS}/class2d/run_classes.png",
        f"{RESULTS}/particles_selected.star",
    ]
