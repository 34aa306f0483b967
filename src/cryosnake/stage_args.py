"""Command-line options of the stages, built from the workflow configuration.

The rules (rules/*.smk) call ``cryosnake <stage> ...`` with the paths of their inputs
and outputs; every other option comes from here, built from the validated
configuration (the Snakefile's ``config``, defaults filled in from the schema). Each
function returns the options as a list of arguments; :func:`command_line` quotes
them for a ``shell:`` command. Values are written as the configuration holds them
(``--pixel-size 1.5``), so that a stage parses exactly the configured value.

Example::

    from cryosnake.config import load_config
    from cryosnake.stage_args import class2d_args, command_line
    config = load_config("config/config.yaml", "config/schemas/config.schema.yaml")
    command_line(class2d_args(config))
    # '--classes 8 --iterations 25 --seed 1 --diameter 165 --device auto'
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MASK_DIAMETER_FACTOR",
    "acquisition_args",
    "class2d_args",
    "class3d_args",
    "command_line",
    "ctf_args",
    "curate_args",
    "extract_args",
    "gain_args",
    "import_args",
    "initial3d_args",
    "inspect_args",
    "mask_diameter",
    "micrograph_pixel_size",
    "motioncor_args",
    "pick_args",
    "postprocess_args",
    "refine3d_args",
    "select2d_args",
    "simulate_args",
]

Config = Mapping[str, Any]

# The mask of 2D classification and 3D refinement is a little wider than the particle.
MASK_DIAMETER_FACTOR = 1.1


def command_line(args: list[str]) -> str:
    """``args`` quoted for a shell command."""
    return shlex.join(args)


def _g(value: float) -> str:
    return f"{value:g}"


def mask_diameter(config: Config) -> str:
    """Å, the mask diameter of class2d, initial3d, class3d and refine3d: 1.1 x
    pick.diameter."""
    return _g(MASK_DIAMETER_FACTOR * config["pick"]["diameter"])


def micrograph_pixel_size(config: Config) -> float:
    """Å per pixel of the motion-corrected micrographs (movie pixels x motioncor.bin)."""
    return config["acquisition"]["pixel_size"] * config["motioncor"]["bin"]


def acquisition_args(config: Config, *, pixel_size: float | None = None) -> list[str]:
    """``--pixel-size --voltage --cs --amplitude-contrast`` of the acquisition section
    (``pixel_size``: another pixel size, e.g. of binned micrographs)."""
    acq = config["acquisition"]
    size = acq["pixel_size"] if pixel_size is None else pixel_size
    return [
        "--pixel-size", str(size), "--voltage", str(acq["voltage"]), "--cs", str(acq["cs"]),
        "--amplitude-contrast", str(acq["amplitude_contrast"]),
    ]  # fmt: skip


def _dose(config: Config) -> list[str]:
    return ["--dose-per-frame", str(config["acquisition"]["dose_per_frame"])]


def _movie_pixel_size(config: Config) -> list[str]:
    return ["--pixel-size", str(config["acquisition"]["pixel_size"])]


def _header(config: Config) -> list[str]:
    ignore = config["inspect"]["ignore_header_pixel_size"]
    return ["--ignore-header-pixel-size"] if ignore else []


def _eer(config: Config) -> list[str]:
    return ["--eer-group", str(config["input"]["eer_group"])]


def _checkpoint(url: str | None) -> list[str]:
    return [] if url is None else ["--checkpoint-url", url]


def gain_args(config: Config, gain: str | None) -> list[str]:
    """``--gain`` and its orientation; none without a gain reference."""
    if gain is None:
        return []
    inp = config["input"]
    return [
        "--gain", gain, "--gain-rotate", str(inp["gain_rotate"]),
        "--gain-flip", str(inp["gain_flip"]),
    ]  # fmt: skip


def simulate_args(config: Config) -> list[str]:
    """``cryosnake simulate``: preset, seed, movie count and format, acquisition."""
    sim = config["simulate"]
    return [
        "--preset", str(sim["preset"]), "--seed", str(sim["seed"]),
        "--n-movies", str(sim["n_movies"]), "--format", str(sim["format"]),
        *acquisition_args(config), *_dose(config),
    ]  # fmt: skip


def inspect_args(config: Config) -> list[str]:
    """``cryosnake inspect`` (without the movie and gain): EER grouping, pixel size,
    dose and its tolerance, header check."""
    return [
        *_eer(config), *_movie_pixel_size(config), *_dose(config),
        "--dose-tolerance", str(config["inspect"]["dose_tolerance"]), *_header(config),
    ]  # fmt: skip


def import_args(config: Config) -> list[str]:
    """``cryosnake import``: the optics of movies.star."""
    return acquisition_args(config)


def motioncor_args(config: Config) -> list[str]:
    """``cryosnake motioncor`` (without the movie and gain): pixel size, dose, EER
    grouping and the motioncor section."""
    mc = config["motioncor"]
    return [
        *_movie_pixel_size(config), *_dose(config), *_eer(config),
        "--patches", str(mc["patches"]), "--bin", str(mc["bin"]),
        "--bfactor", str(mc["bfactor"]), "--bfactor-global", str(mc["bfactor_global"]),
        "--pre-exposure", str(mc["pre_exposure"]), "--device", str(mc["device"]),
        *_header(config),
    ]  # fmt: skip


def ctf_args(config: Config) -> list[str]:
    """``cryosnake ctf``: acquisition at the micrograph pixel size, the ctf section."""
    c = config["ctf"]
    phase = ["--fit-phase-shift"] if c["fit_phase_shift"] else []
    return [
        *acquisition_args(config, pixel_size=micrograph_pixel_size(config)),
        "--min-res", str(c["min_res"]), "--max-res", str(c["max_res"]),
        "--defocus-range", str(c["defocus_min"]), str(c["defocus_max"]),
        "--max-astigmatism", str(c["max_astigmatism"]), *phase,
    ]  # fmt: skip


def curate_args(config: Config) -> list[str]:
    """``cryosnake curate``: acquisition (movie pixel size) and every threshold."""
    thresholds = [
        arg
        for key, value in config["curate"].items()
        for arg in (f"--{key.replace('_', '-')}", str(value))
    ]
    return [*acquisition_args(config), *thresholds]


def pick_args(config: Config, templates: str | None = None) -> list[str]:
    """``cryosnake pick``: micrograph pixel size, the pick section (``templates``: the
    template stack as the job sees it, if any)."""
    p = config["pick"]
    threshold = [] if p["threshold"] == "auto" else ["--threshold", str(p["threshold"])]
    template = [] if templates is None else ["--templates", templates]
    return [
        "--pixel-size", str(micrograph_pixel_size(config)),
        "--diameter", str(p["diameter"]), "--device", str(p["device"]),
        *threshold, *template,
    ]  # fmt: skip


def extract_args(config: Config) -> list[str]:
    """``cryosnake extract``: micrograph pixel size, particle diameter, box, binning."""
    e = config["extract"]
    box = ["--box", str(e["box"])] if e["box"] else []
    bin_to = ["--bin-to", str(e["bin_to"])] if e["bin_to"] else []
    return [
        "--pixel-size", str(micrograph_pixel_size(config)),
        "--diameter", str(config["pick"]["diameter"]), *box, *bin_to,
    ]  # fmt: skip


def class2d_args(config: Config, checkpoint_url: str | None = None) -> list[str]:
    """``cryosnake class2d``: the class2d section and the mask diameter."""
    c = config["class2d"]
    return [
        "--classes", str(c["classes"]), "--iterations", str(c["iterations"]),
        "--seed", str(c["seed"]), "--diameter", mask_diameter(config),
        "--device", str(c["device"]), *_checkpoint(checkpoint_url),
    ]  # fmt: skip


def select2d_args(config: Config) -> list[str]:
    """``cryosnake select2d``: the listed classes, or none (automatic by score)."""
    classes = config["select2d"]["classes"]
    return ["--classes", ",".join(map(str, classes))] if classes else []


def initial3d_args(config: Config, checkpoint_url: str | None = None) -> list[str]:
    """``cryosnake initial3d``: the initial3d section and the mask diameter."""
    c = config["initial3d"]
    return [
        "--resolution", _g(c["resolution"]), "--iterations", str(c["iterations"]),
        "--batch", str(c["batch"]), "--seed", str(c["seed"]),
        "--symmetry", str(c["symmetry"]), "--diameter", mask_diameter(config),
        "--device", str(c["device"]), *_checkpoint(checkpoint_url),
    ]  # fmt: skip


def class3d_args(config: Config, checkpoint_url: str | None = None) -> list[str]:
    """``cryosnake class3d``: the class3d section (``--keep`` only when classes are
    named, else the stage keeps the best-resolved one), initial3d's symmetry, the mask
    diameter."""
    c = config["class3d"]
    keep = ["--keep", *map(str, c["keep"])] if c["keep"] else []
    return [
        "--classes", str(c["classes"]), "--initial-lowpass", _g(c["initial_lowpass"]),
        "--iterations", str(c["iterations"]),
        "--global-iterations", str(c["global_iterations"]),
        "--tau2-fudge", _g(c["tau2_fudge"]), "--seed", str(c["seed"]),
        "--symmetry", str(config["initial3d"]["symmetry"]),
        "--diameter", mask_diameter(config), *keep, "--device", str(c["device"]),
        *_checkpoint(checkpoint_url),
    ]  # fmt: skip


def refine3d_args(config: Config, checkpoint_url: str | None = None) -> list[str]:
    """``cryosnake refine3d``: the refine3d section, initial3d's symmetry, the mask
    diameter."""
    c = config["refine3d"]
    return [
        "--initial-lowpass", _g(c["initial_lowpass"]), "--iterations", str(c["iterations"]),
        "--seed", str(c["seed"]), "--symmetry", str(config["initial3d"]["symmetry"]),
        "--diameter", mask_diameter(config), "--device", str(c["device"]),
        *_checkpoint(checkpoint_url),
    ]  # fmt: skip


def postprocess_args(config: Config) -> list[str]:
    """``cryosnake postprocess``: a given B-factor, else none (Guinier fit)."""
    bfactor = config["postprocess"]["bfactor"]
    return [] if bfactor is None else ["--bfactor", _g(bfactor)]
