# Movie discovery, paths and input functions shared by the rules.
import os
import shlex
import sys
import time

from cryosnake.chunks import CHUNK_PATTERN, assign_chunks, parse_chunk_table
from cryosnake.config import check_workflow_version, movie_table, simulated_gain
from cryosnake.errors import ConfigError
from cryosnake.stage_args import (
    class2d_args,
    class3d_args,
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


if s3_storage() is not None:
    from cryosnake.aws.inventory import recheck_missing_folders

    recheck_missing_folders()


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
# Written by import_movies: the movies inspect accepted (one line each), and those it
# rejected, with the reason.
MOVIES_SUMMARY = f"{RESULTS}/movies_summary.tsv"
REJECTED_MOVIES = f"{RESULTS}/movies_rejected.tsv"
BENCHMARKS = f"{RESULTS}/benchmarks"
SIM = config["simulate"]
CONTAINER_CPU = config["containers"]["cpu"]
CONTAINER_GPU = config["containers"]["gpu"]
# Which chunk (one job of each per-movie stage) every movie belongs to, kept for ever
# (cryosnake.chunks); MICROGRAPHS holds the motion-corrected sums of each chunk.
CHUNK_TABLE = f"{RESULTS}/chunks.tsv"
MICROGRAPHS = f"{RESULTS}/micrographs"


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


def plan_chunks():
    """The chunks of the movies (cryosnake.chunks.assign_chunks), from the kept table
    and the movies found now. The process that plans and runs the jobs appends the new
    movies to the table (not a dry run, not a job of a cluster or AWS Batch, which
    only read it: a movie that arrived since is not theirs to assign)."""
    text = result_text(CHUNK_TABLE)
    previous = {} if text is None else parse_chunk_table(text, CHUNK_TABLE)
    job = workflow.remote_exec or workflow.subprocess_exec
    movies = [m for m in MOVIES if m in previous] if job else MOVIES
    return assign_chunks(movies, config["input"]["chunk_size"], previous)


CHUNK_TABLE_KEPT = []


def keep_chunk_table():
    """Write the chunk table when it has new movies, once, from the process that plans
    and runs the jobs (called while it plans them, when Snakemake knows whether this is
    a dry run: a dry run, a DAG picture or --lint writes nothing), before any job is
    submitted."""
    if CHUNK_TABLE_KEPT or not CHUNKS.new or workflow.executor_plugin is None:
        return
    CHUNK_TABLE_KEPT.append(True)
    if (
        not workflow.dryrun
        and not workflow.remote_exec
        and not workflow.subprocess_exec
    ):
        keep_result_text(CHUNK_TABLE, CHUNKS.text)


def keep_result_text(path, text):
    """Write a workflow state file (local, or in S3 with S3 as default storage)."""
    s3 = s3_storage()
    if s3 is None:
        from cryosnake.io import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return
    from cryosnake.aws.storage import write_s3_text

    prefix, endpoint, region = s3
    write_s3_text(prefix, path, text, endpoint_url=endpoint, region=region)


try:
    CHUNKS = plan_chunks()
except ConfigError as err:
    sys.exit(f"cryosnake: {err}")


wildcard_constraints:
    chunk=CHUNK_PATTERN,


def chunk_movies(wildcards):
    """The movie files of one chunk (the chunk table is kept first)."""
    keep_chunk_table()
    return [MOVIES[m] for m in CHUNKS.movies(wildcards.chunk)]


def chunk_minutes(per_movie, least=10):
    """Resource function: a chunk job's runtime limit, ``per_movie`` minutes for each of
    its movies (at least ``least``)."""

    def minutes(wildcards):
        return max(least, per_movie * len(CHUNKS.chunks.get(wildcards.chunk, ())))

    return minutes


INVENTORY = []


def prime_storage_inventory():
    """With S3 as default storage, fill Snakemake's file cache from one listing of the
    storage prefix instead of requests per file (cryosnake.aws.inventory), once, in the
    process that plans the jobs. Called from the input function of the target all,
    the first job Snakemake plans (its file cache exists from then on)."""
    s3 = s3_storage()
    if s3 is None or INVENTORY or workflow.remote_exec or workflow.subprocess_exec:
        return
    from cryosnake.aws.inventory import list_storage, points_elsewhere, prime_inventory

    prefix, endpoint, region = s3
    INVENTORY.append(prefix)
    if points_elsewhere(config, prefix) is not None:
        return
    objects = list_storage(prefix, endpoint_url=endpoint, region=region)
    local = workflow.storage_registry.default_storage_provider.local_prefix
    prime_inventory(workflow.iocache, local, prefix, objects)


def all_targets(wildcards):
    """Input function of the target all: final_targets() and FINAL_PER_CHUNK of every
    chunk (and the storage inventory first)."""
    prime_storage_inventory()
    keep_chunk_table()
    return [*final_targets(), *per_chunk(*FINAL_PER_CHUNK)]


def live_chunk_targets(wildcards):
    """Input function of the targets of `cryosnake live`: every chunk's per-movie
    results (and the storage inventory and chunk table first)."""
    prime_storage_inventory()
    keep_chunk_table()
    return per_chunk(*FINAL_PER_CHUNK, f"{RESULTS}/extract/{{chunk}}")


def per_chunk(*patterns):
    """``patterns`` (with {chunk}) for every chunk."""
    return expand(list(patterns), chunk=list(CHUNKS.chunks))


def gain_input(wildcards):
    """The gain reference, as an input of per-movie rules (none when not configured)."""
    gain = config["input"]["gain"]
    return [] if gain is None else [gain]


def gain_options(wildcards, input):
    """Gain options of inspect and motioncor (none without a gain reference)."""
    return command_line(gain_args(config, input.gain[0] if input.gain else None))


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
    """The map class3d and refine3d start from: initial3d.reference if set, else the
    ab initio map."""
    reference = config["initial3d"]["reference"]
    return reference if reference else f"{RESULTS}/initial3d/initial_model.mrc"


def class3d_on():
    """Whether 3D classification runs between the 2D selection and refine3d."""
    return config["map3d"] and config["class3d"]["classes"] > 0


def refine3d_particles():
    """The particles refine3d refines: those of the kept 3D classes when class3d is
    on, else every selected particle."""
    if class3d_on():
        return f"{RESULTS}/class3d/particles_kept.star"
    return f"{RESULTS}/particles_selected.star"


# What the class3d rule writes that the report and `rule all` ask for.
CLASS3D_RESULTS = [
    f"{RESULTS}/class3d/run_model.star",
    f"{RESULTS}/class3d/particles_kept.star",
    f"{RESULTS}/class3d/run_classes.png",
]


def config_yaml():
    """The effective configuration (files, --config and defaults), as YAML."""
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False)


# The folders of per-movie pictures the report shows (motion and CTF plots, picks;
# small files: the micrographs are in MICROGRAPHS), of every chunk.
REPORT_PER_CHUNK = [
    f"{RESULTS}/motioncor/{{chunk}}",
    f"{RESULTS}/ctf/{{chunk}}",
    f"{RESULTS}/pick/{{chunk}}",
]


def report_inputs():
    """Every file the report reads but the per-chunk folders (REPORT_PER_CHUNK): 2D
    results, the rejected movies and micrographs, and 3D results when map3d is on
    (with the 3D classes when class3d is on)."""
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
    if class3d_on():
        files += CLASS3D_RESULTS
    return files


# Per-chunk folders that the target all asks for (inspect's thumbnails, micrographs,
# motion, CTF and picks of every movie).
FINAL_PER_CHUNK = [
    f"{RESULTS}/inspect/{{chunk}}",
    f"{MICROGRAPHS}/{{chunk}}",
    *REPORT_PER_CHUNK,
]


def final_targets():
    """Everything `rule all` asks for but FINAL_PER_CHUNK."""
    maps = (
        [
            f"{RESULTS}/initial3d/initial_model.png",
            f"{RESULTS}/refine3d/run_angdist.png",
            f"{RESULTS}/postprocess/postprocess.mrc",
            *(CLASS3D_RESULTS if class3d_on() else []),
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
        f"{RESULTS}/micrographs_ctf.star",
        f"{RESULTS}/micrographs_selected.star",
        f"{RESULTS}/rejected.tsv",
        f"{RESULTS}/particles.star",
        f"{RESULTS}/class2d/run_classes.png",
        f"{RESULTS}/particles_selected.star",
    ]
