"""Stage options from the configuration (cryosnake.stage_args) and schema defaults."""

from __future__ import annotations

import argparse
import copy
import importlib
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from cryosnake import stage_args as sa
from cryosnake.cli import STAGES
from cryosnake.config import load_config, load_schema, schema_default, validate_config
from cryosnake.errors import ConfigError
from cryosnake.stages._common import (
    SchemaDefault,
    file_name,
    resolve_name,
    schema_defaults,
    stage_parser,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    return load_config(ROOT / "config" / "config.yaml", SCHEMA)


def _with(config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    section, name = key.split(".")
    changed[section][name] = value
    return validate_config(changed, SCHEMA)


# The demo configuration's options, as the rules gave them before stage_args existed.
DEMO = {
    sa.simulate_args: "--preset demo --seed 1 --n-movies 6 --format mrc --pixel-size 1.5 "
    "--voltage 300 --cs 2.7 --amplitude-contrast 0.07 --dose-per-frame 1.0",
    sa.inspect_args: "--eer-group 32 --pixel-size 1.5 --dose-per-frame 1.0 --dose-tolerance 0.25",
    sa.import_args: "--pixel-size 1.5 --voltage 300 --cs 2.7 --amplitude-contrast 0.07",
    sa.motioncor_args: "--pixel-size 1.5 --dose-per-frame 1.0 --eer-group 32 --patches 5x5 "
    "--bin 1 --bfactor 150 --bfactor-global 500 --pre-exposure 0 --device auto",
    sa.ctf_args: "--pixel-size 1.5 --voltage 300 --cs 2.7 --amplitude-contrast 0.07 "
    "--min-res 30 --max-res 5 --defocus-range 3000 50000 --max-astigmatism 3000",
    sa.curate_args: "--pixel-size 1.5 --voltage 300 --cs 2.7 --amplitude-contrast 0.07 "
    "--max-resolution 10 --min-figure-of-merit 0.1 --min-defocus 0 --max-defocus 0 "
    "--max-astigmatism 2000 --max-total-motion 0 --max-early-motion 0",
    sa.pick_args: "--pixel-size 1.5 --diameter 150 --device auto",
    sa.extract_args: "--pixel-size 1.5 --diameter 150",
    sa.class2d_args: "--classes 8 --iterations 25 --seed 1 --diameter 165 --device auto",
    sa.select2d_args: "",
    sa.initial3d_args: "--resolution 20 --iterations 40 --batch 300 --seed 0 --symmetry C1 "
    "--diameter 165 --device auto",
    sa.refine3d_args: "--initial-lowpass 30 --iterations 12 --seed 0 --symmetry C1 "
    "--diameter 165 --device auto",
    sa.postprocess_args: "",
    sa.class3d_args: "--classes 0 --initial-lowpass 30 --iterations 25 --global-iterations 2 "
    "--tau2-fudge 4 --seed 0 --symmetry C1 --diameter 165 --device auto",
}


@pytest.mark.parametrize("build", list(DEMO), ids=lambda f: f.__name__)
def test_demo_config_gives_todays_options(demo: dict[str, Any], build: Any) -> None:
    assert sa.command_line(build(demo)) == DEMO[build]


@pytest.mark.parametrize(
    ("build", "key", "value", "expected"),
    [
        (sa.ctf_args, "motioncor.bin", 2, ["--pixel-size", "3.0"]),
        (sa.pick_args, "motioncor.bin", 2, ["--pixel-size", "3.0"]),
        (sa.motioncor_args, "acquisition.pixel_size", 0.8, ["--pixel-size", "0.8"]),
        (sa.curate_args, "acquisition.voltage", 200, ["--voltage", "200"]),
        (sa.curate_args, "curate.max_resolution", 6, ["--max-resolution", "6"]),
        (sa.class2d_args, "pick.diameter", 200, ["--diameter", "220"]),
        (sa.initial3d_args, "pick.diameter", 200, ["--diameter", "220"]),
        (sa.refine3d_args, "initial3d.symmetry", "D7", ["--symmetry", "D7"]),
        (sa.class3d_args, "initial3d.symmetry", "D7", ["--symmetry", "D7"]),
        (sa.class3d_args, "class3d.classes", 3, ["--classes", "3"]),
        (sa.class3d_args, "class3d.tau2_fudge", 2.5, ["--tau2-fudge", "2.5"]),
        (sa.class3d_args, "class3d.keep", [1, 3], ["--keep", "1", "3"]),
        (sa.extract_args, "extract.box", 96, ["--box", "96"]),
        (sa.select2d_args, "select2d.classes", [1, 4], ["--classes", "1,4"]),
        (sa.postprocess_args, "postprocess.bfactor", -50, ["--bfactor", "-50"]),
        (sa.motioncor_args, "inspect.ignore_header_pixel_size", True,
         ["--ignore-header-pixel-size"]),
        (sa.ctf_args, "ctf.fit_phase_shift", True, ["--fit-phase-shift"]),
        (sa.pick_args, "pick.threshold", 0.3, ["--threshold", "0.3"]),
    ],
)  # fmt: skip
def test_a_config_key_changes_its_flag(
    demo: dict[str, Any], build: Any, key: str, value: Any, expected: list[str]
) -> None:
    before, after = build(demo), build(_with(demo, key, value))
    assert before != after
    text = shlex.join(after)
    assert shlex.join(expected) in text


def test_mask_diameter_is_computed_once(demo: dict[str, Any]) -> None:
    changed = _with(demo, "pick.diameter", 120)
    for build in (sa.class2d_args, sa.initial3d_args, sa.class3d_args, sa.refine3d_args):
        argv = build(changed)
        assert argv[argv.index("--diameter") + 1] == sa.mask_diameter(changed) == "132"


def test_checkpoint_url_and_gain_are_parameters(demo: dict[str, Any]) -> None:
    url = "s3://bucket/scratch/class2d/"
    assert sa.class2d_args(demo, url)[-2:] == ["--checkpoint-url", url]
    assert "--checkpoint-url" not in sa.refine3d_args(demo)
    assert sa.gain_args(demo, None) == []
    assert sa.gain_args(demo, "my gain.mrc") == [
        "--gain", "my gain.mrc", "--gain-rotate", "0", "--gain-flip", "none",
    ]  # fmt: skip
    assert "'my gain.mrc'" in sa.command_line(sa.gain_args(demo, "my gain.mrc"))


def test_class3d_args_give_the_whole_command_line(demo: dict[str, Any]) -> None:
    config = copy.deepcopy(demo)
    config["class3d"].update(classes=4, keep=[2, 4], iterations=10, seed=7)
    config["initial3d"]["symmetry"] = "C2"
    url = "s3://bucket/scratch/checkpoints/class3d/"
    assert sa.class3d_args(validate_config(config, SCHEMA), url) == [
        "--classes", "4", "--initial-lowpass", "30", "--iterations", "10",
        "--global-iterations", "2", "--tau2-fudge", "4", "--seed", "7", "--symmetry", "C2",
        "--diameter", "165", "--keep", "2", "4", "--device", "auto",
        "--checkpoint-url", url,
    ]  # fmt: skip
    # No --keep when none is named: the stage keeps the best-resolved class.
    assert "--keep" not in sa.class3d_args(demo)


def test_class3d_keep_must_name_classes(demo: dict[str, Any]) -> None:
    for bad in ({"classes": -1}, {"keep": [0]}, {"tau2_fudge": 0}):
        config = copy.deepcopy(demo)
        config["class3d"].update(bad)
        with pytest.raises(ConfigError, match=r"^class3d\."):
            validate_config(config, SCHEMA)


def test_every_option_parses_with_its_stage(demo: dict[str, Any]) -> None:
    stage = {
        sa.ctf_args: ("ctf", ["--micrograph", "m.mrc", "--out", "m.star"]),
        sa.curate_args: ("curate", ["--ctf", "a.star", "--motion", "b.star", "--out-dir", "r"]),
        sa.class2d_args: ("class2d", ["--particles", "p.star", "--out-dir", "o"]),
        sa.refine3d_args: ("refine3d", ["--particles", "p", "--reference", "r", "--out-dir", "o"]),
    }
    for build, (name, paths) in stage.items():
        module = importlib.import_module(f"cryosnake.{STAGES[name]}")
        parser = stage_parser(name, module.__doc__)
        module.add_args(parser)
        parser.parse_args([*paths, *build(demo)])


def test_class3d_options_parse_with_the_stage(demo: dict[str, Any]) -> None:
    """As the workflow runs it: only with classes > 0 (0 switches the step off)."""
    module = importlib.import_module(f"cryosnake.{STAGES['class3d']}")
    parser = stage_parser("class3d", module.__doc__)
    module.add_args(parser)
    paths = ["--particles", "p", "--reference", "r", "--out-dir", "o"]
    for keep in ([], [1, 3]):
        config = copy.deepcopy(demo)
        config["class3d"].update(classes=3, keep=keep)
        args = parser.parse_args([*paths, *sa.class3d_args(config)])
        assert args.classes == 3 and list(args.keep or []) == keep


def test_schema_default_reads_the_schema() -> None:
    schema = load_schema(SCHEMA)
    curate = schema["properties"]["curate"]["properties"]
    assert schema_default("curate.max_resolution") == curate["max_resolution"]["default"]
    assert schema_default("motioncor.patches") == "5x5"
    with pytest.raises(ConfigError, match=r"^curate\.nope: no such key"):
        schema_default("curate.nope")
    with pytest.raises(ConfigError, match=r"^nope\.x: no such key"):
        schema_default("nope.x")


def test_config_yaml_holds_the_schema_defaults() -> None:
    """config/config.yaml (the demo) does not contradict the schema: every value it
    sets is the schema's default."""
    given = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for section, values in given.items():
        if isinstance(values, dict):
            for key, value in values.items():
                assert value == schema_default(f"{section}.{key}"), f"{section}.{key}"
        else:
            assert values == schema_default(section), section


def test_stage_defaults_come_from_the_schema() -> None:
    from cryosnake.stages import ctf, curate, motioncor

    cases = [
        (curate, "curate", ["--ctf", "a", "--motion", "b", "--out-dir", "o", "--pixel-size",
                            "1", "--voltage", "300", "--cs", "2.7", "--amplitude-contrast",
                            "0.1"]),
        (ctf, "ctf", ["--micrograph", "m", "--out", "o", "--pixel-size", "1", "--voltage",
                      "300", "--cs", "2.7", "--amplitude-contrast", "0.1"]),
        (motioncor, "motioncor", ["--movie", "m", "--out-dir", "o", "--pixel-size", "1",
                                  "--dose-per-frame", "1"]),
    ]  # fmt: skip
    parsed = {}
    for module, name, argv in cases:
        parser = stage_parser(name, module.__doc__)
        module.add_args(parser)
        args = parser.parse_args(argv)
        assert isinstance(args.__dict__.get("min_res", SchemaDefault("x")), SchemaDefault)
        schema_defaults(parser, args)
        parsed[name] = args
    assert parsed["curate"].max_resolution == schema_default("curate.max_resolution") == 10
    assert parsed["curate"].min_figure_of_merit == schema_default("curate.min_figure_of_merit")
    assert parsed["ctf"].defocus_range == (3000.0, 50000.0)
    assert parsed["ctf"].min_res == 30.0
    assert parsed["motioncor"].patches == (5, 5)
    assert parsed["motioncor"].bin == 1 and parsed["motioncor"].eer_group == 32


def test_schema_default_shows_its_value_in_help() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--x", type=float, default=SchemaDefault("curate.max_resolution"))
    parser.add_argument("--r", default=SchemaDefault("ctf.defocus_min", "ctf.defocus_max"))
    assert str(parser.get_default("x")) == "10"
    assert str(parser.get_default("r")) == "3000 50000"


@pytest.mark.parametrize(
    ("path", "root", "name"),
    [
        ("results/extract/m.mrcs", None, "results/extract/m.mrcs"),
        ("results/extract/m.mrcs", ".", "results/extract/m.mrcs"),
        ("./results/x.star", ".", "results/x.star"),
        (".snakemake/storage/s3/b/p/results/m.mrcs", ".snakemake/storage/s3/b/p",
         "results/m.mrcs"),
        ("/data/session/m.tif", ".", "/data/session/m.tif"),
        ("../movies/m.tif", ".", "../movies/m.tif"),
    ],
)  # fmt: skip
def test_file_name(path: str, root: str | None, name: str) -> None:
    assert file_name(path, root) == name


def test_resolve_name(tmp_path: Path) -> None:
    root = tmp_path / "prefix"
    (root / "results").mkdir(parents=True)
    (root / "results" / "s.mrcs").write_bytes(b"")
    star = tmp_path / "elsewhere" / "p.star"
    assert resolve_name("results/s.mrcs", str(root), star) == root / "results" / "s.mrcs"
    assert resolve_name("/abs/s.mrcs", str(root), star) == Path("/abs/s.mrcs")
    star.parent.mkdir()
    (star.parent / "t.mrcs").write_bytes(b"")
    assert resolve_name("t.mrcs", str(root), star) == star.parent / "t.mrcs"
