# cryosnake: cryo-EM movies -> map. Loads and validates the configuration, includes
# the rules and defines the final targets. All computation is in the cryosnake
# package; rules call its command-line stages (`cryosnake <stage>`).
import sys
from pathlib import Path

from snakemake.utils import min_version

try:
    from cryosnake.config import validate_config
    from cryosnake.errors import ConfigError
except ImportError:
    sys.exit(
        "cryosnake: this snakemake cannot import the cryosnake package; "
        "run `make install` and use .venv/bin/snakemake (or `make demo`)"
    )

min_version("9.0")


configfile: "config/config.yaml"


try:
    validate_config(
        config,
        Path(workflow.basedir) / "config" / "schemas" / "config.schema.yaml",
        source=" + ".join(map(str, workflow.configfiles)) or "--config",
    )
except ConfigError as err:
    sys.exit(f"cryosnake: config error: {err}")


include: "rules/common.smk"
include: "rules/simulate.smk"
include: "rules/preprocess.smk"
include: "rules/motioncor.smk"
include: "rules/ctf.smk"
include: "rules/particles.smk"
include: "rules/map.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets,


# What `cryosnake live` asks for (cryosnake.live.session): as movies arrive, the
# per-movie stages of every chunk; then curation and the particles of the selected
# micrographs; every so many new particles, 2D classification and selection.
rule live_chunks:
    input:
        live_chunk_targets,


rule live_curate:
    input:
        live_chunk_targets,
        f"{RESULTS}/movies.star",
        f"{RESULTS}/micrographs_selected.star",
        f"{RESULTS}/particles.star",


rule live_2d:
    input:
        f"{RESULTS}/class2d/run_classes.png",
        f"{RESULTS}/particles_selected.star",


onstart:
    refuse_s3_keys()


onerror:
    report_stage_errors()
