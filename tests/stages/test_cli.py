"""The ``cryosnake`` command: user errors are one line on stderr, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cryosnake import __version__, cli
from cryosnake.io import read_mrc, write_mrc

EXE = Path(sys.executable).parent / "cryosnake"


def check_one_line(code: int, err: str) -> str:
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cryosnake")
    return lines[0]


def bad_invocations(data: Path, tmp: Path) -> dict[str, tuple[list[object], int, str]]:
    """name -> (arguments, expected exit status, text the message must contain)."""
    movie = data / "movies" / "movie_0001.mrc"
    truncated = tmp / "truncated.mrc"
    truncated.write_bytes(movie.read_bytes()[:3000])
    gain, _ = read_mrc(data / "gain.mrc")
    small_gain = write_mrc(tmp / "small_gain.mrc", gain[:200, :100], 2.5)
    not_json = tmp / "report.json"
    not_json.write_text("not json")
    out = tmp / "out"
    inspect = ["inspect", "--out", out / "r.json", "--pixel-size", 2.5, "--dose-per-frame", 3]
    imp = ["import", "--out", out / "m.star", "--pixel-size", 2.5, "--voltage", 300,
           "--cs", 2.7, "--amplitude-contrast", 0.07]  # fmt: skip
    sim = ["simulate", "--preset", "tiny", "--out-dir", out / "sim"]
    return {
        "unknown command": (["nonsense"], 2, "nonsense"),
        "no command": ([], 2, "command"),
        "bad preset": (["simulate", "--preset", "huge", "--out-dir", out], 2, "huge"),
        "unknown --set key": ([*sim, "--set", "bogus=1"], 1, "bogus"),
        "--set without value": ([*sim, "--set", "width"], 1, "width"),
        "--set bad value": ([*sim, "--set", "width=wide"], 1, "width"),
        "--set negative": ([*sim, "--set", "dose_per_frame=-2"], 1, "dose_per_frame"),
        "bad --seed": ([*sim, "--seed", "one"], 2, "--seed"),
        "bad --pixel-size": ([*sim, "--pixel-size", "0"], 2, "--pixel-size"),
        "too small": ([*sim, "--size", "32"], 1, "particle_diameter"),
        "missing specimen": ([*sim, "--specimen", tmp / "none.pdb"], 1, "none.pdb"),
        "odd specimen": ([*sim, "--specimen", "thing.xyz"], 1, "thing.xyz"),
        "missing movie": ([*inspect, "--movie", tmp / "nope.mrc"], 1, "nope.mrc"),
        "truncated movie": ([*inspect, "--movie", truncated], 1, "truncated.mrc"),
        "wrong gain size": ([*inspect, "--movie", movie, "--gain", small_gain], 1, "gain"),
        "bad --gain-rotate": ([*inspect, "--movie", movie, "--gain-rotate", "5"], 2, "rotate"),
        "missing arguments": (["inspect", "--movie", movie], 2, "--out"),
        "missing report": ([*imp, "--reports", tmp / "gone.json"], 1, "gone.json"),
        "report not JSON": ([*imp, "--reports", not_json], 1, "report.json"),
    }


NAMES = [
    "unknown command",
    "no command",
    "bad preset",
    "unknown --set key",
    "--set without value",
    "--set bad value",
    "--set negative",
    "bad --seed",
    "bad --pixel-size",
    "too small",
    "missing specimen",
    "odd specimen",
    "missing movie",
    "truncated movie",
    "wrong gain size",
    "bad --gain-rotate",
    "missing arguments",
    "missing report",
    "report not JSON",
]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_in_process(
    name: str, tiny_dataset: Path, tmp_path: Path, run_cli: Callable
) -> None:
    args, status, text = bad_invocations(tiny_dataset, tmp_path)[name]
    code, out, err = run_cli(args)
    line = check_one_line(code, err)
    assert code == status
    assert text in line
    assert out == ""
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.skipif(not EXE.exists(), reason="console script not installed")
@pytest.mark.parametrize(
    "name", ["unknown command", "bad preset", "unknown --set key", "truncated movie"]
)
def test_bad_input_through_the_console_script(
    name: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    args, status, text = bad_invocations(tiny_dataset, tmp_path)[name]
    proc = subprocess.run(
        [str(EXE), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = check_one_line(proc.returncode, proc.stderr)
    assert proc.returncode == status
    assert text in line
    assert proc.stdout == ""


def test_every_bad_input_is_run(tiny_dataset: Path, tmp_path: Path) -> None:
    assert sorted(bad_invocations(tiny_dataset, tmp_path)) == sorted(NAMES)


def test_help_and_version(run_cli: Callable) -> None:
    code, out, _ = run_cli(["--version"])
    assert code == 0 and out.strip() == f"cryosnake {__version__}"
    code, out, _ = run_cli(["--help"])
    assert code == 0 and "inspect" in out and "simulate" in out
    for stage in cli.STAGES:
        code, out, err = run_cli([stage, "--help"])
        assert code == 0, err
        assert f"cryosnake {stage}" in out
        assert "Example::" in out  # the module docstring with its example command


def test_successful_stage_returns_zero(tmp_path: Path, run_cli: Callable) -> None:
    code, out, err = run_cli(
        ["simulate", "--preset", "tiny", "--list-parameters", "--out-dir", tmp_path]
    )
    assert code == 0 and err == ""
    assert "n_movies = 2" in out
