"""scripts/microscope.py: the test microscope that replays movies the way EPU writes them."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import re
import threading
import time
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "microscope.py"
EPU_PATH = re.compile(
    r"^Images-Disc1/GridSquare_\d{8}/Data/"
    r"(?P<stem>FoilHole_(?P<hole>\d{8})_Data_\d{8}_\d{8}_\d{8}_\d{6})_fractions\.(mrc|tiff|eer)$"
)


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("microscope", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


microscope = _load()


def _movies(folder: Path, names: list[str], size: int = 1000) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.write_bytes(bytes((i + j) % 251 for j in range(size + i)))
        paths.append(path)
    return paths


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as table:
        return list(csv.DictReader(table, delimiter="\t"))


def test_epu_layout_names_bytes_xml_and_manifest(tmp_path: Path) -> None:
    names = [f"movie_{i:04d}{ext}" for i, ext in enumerate([".mrc", ".tif", ".eer", ".tiff"] * 3)]
    sources = _movies(tmp_path / "src", names)
    (tmp_path / "src" / "notes.txt").write_text("not a movie")
    _movies(tmp_path / "src" / "sub", ["movie_9999.mrc"])  # not directly in the source
    dest = tmp_path / "scope" / "run"
    rows = microscope.replay(tmp_path / "src", dest, interval=0.0, seed=3)

    assert [row["source"] for row in rows] == names
    assert _read_manifest(tmp_path / "scope" / "microscope.tsv") == rows
    stems = [row["movie"] for row in rows]
    assert len(set(stems)) == len(stems)
    holes: Counter[str] = Counter()
    for source, row in zip(sources, rows, strict=True):
        match = EPU_PATH.match(row["path"])
        assert match is not None, row["path"]
        holes[match["hole"]] += 1
        movie = dest / row["path"]
        assert movie.stem == row["movie"] == match["stem"] + "_fractions"
        want = {".mrc": ".mrc", ".tif": ".tiff", ".tiff": ".tiff", ".eer": ".eer"}
        assert movie.suffix == want[source.suffix]
        assert movie.read_bytes() == source.read_bytes()
        xml = movie.with_name(match["stem"] + ".xml").read_text()
        assert f"<name>{match['stem']}</name>" in xml and "<uniqueID>" in xml
        assert float(row["started"]) <= float(row["finished"])
    assert max(holes.values()) >= 2  # several exposures per foil hole
    squares = sorted((dest / "Images-Disc1").iterdir())
    assert len(squares) == 2  # a new grid square every 8 movies
    for square in squares:
        assert len(list(square.glob("GridSquare_*_*.xml"))) == 1
    assert not [p for p in dest.rglob(".*")]  # no temporary files left behind


def test_seed_fixes_the_epu_numbers(tmp_path: Path) -> None:
    _movies(tmp_path / "src", ["a.mrc", "b.mrc", "c.mrc"])

    def numbers(run: str, seed: int) -> list[str]:
        rows = microscope.replay(tmp_path / "src", tmp_path / run, interval=0.0, seed=seed)
        return [row["path"].rsplit("_", 3)[0] for row in rows]  # without date and time

    assert numbers("one", 0) == numbers("two", 0) != numbers("three", 1)


def test_xml_is_written_only_after_its_movie_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = {p.name: p for p in _movies(tmp_path / "src", ["a.tif", "b.eer", "c.mrc"])}
    checked: list[str] = []
    write_atomic = microscope.write_atomic

    def checking(path: Path, text: str) -> None:
        if path.name.startswith("FoilHole_"):
            (movie,) = path.parent.glob(path.stem + "_fractions.*")
            source = re.search(r"<source>(.*)</source>", text)
            assert source is not None
            assert movie.read_bytes() == sources[source[1]].read_bytes()
            checked.append(path.name)
        write_atomic(path, text)

    monkeypatch.setattr(microscope, "write_atomic", checking)
    rows = microscope.replay(tmp_path / "src", tmp_path / "dest", interval=0.0, write_time=0.02)
    assert checked == [row["movie"].removesuffix("_fractions") + ".xml" for row in rows]


def test_flat_layout_count_and_pace(tmp_path: Path) -> None:
    sources = _movies(tmp_path / "src", ["m1.mrc", "m2.tiff", "m3.eer", "m4.mrc"])
    manifest = tmp_path / "elsewhere" / "list.tsv"
    rows = microscope.replay(
        tmp_path / "src", tmp_path / "dest", 0.05, 3, "flat", manifest=manifest
    )
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == ["m1.mrc", "m2.tiff", "m3.eer"]
    for source in sources[:3]:
        assert (tmp_path / "dest" / source.name).read_bytes() == source.read_bytes()
    assert [(row["movie"], row["path"]) for row in rows] == [
        ("m1", "m1.mrc"),
        ("m2", "m2.tiff"),
        ("m3", "m3.eer"),
    ]
    assert _read_manifest(manifest) == rows
    starts = [float(row["started"]) for row in rows]
    assert all(b - a >= 0.045 for a, b in itertools.pairwise(starts))


def test_movie_is_visible_under_its_final_name_while_written(tmp_path: Path) -> None:
    (source,) = _movies(tmp_path / "src", ["movie.tif"], size=40_000)
    target = tmp_path / "dest" / "movie.tif"
    full = source.stat().st_size
    sizes: set[int] = set()
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            if target.exists():
                sizes.add(target.stat().st_size)
            time.sleep(0.002)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        microscope.replay(
            tmp_path / "src", tmp_path / "dest", 0.0, None, "flat", pieces=4, write_time=0.4
        )
    finally:
        done.set()
        thread.join()
    assert any(0 < size < full for size in sizes), sizes


def test_cli_replays_and_reports_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _movies(tmp_path / "src", ["a.mrc", "b.mrc", "c.mrc"])
    dest = tmp_path / "dest"
    argv = ["--source", str(tmp_path / "src"), "--dest", str(dest), "--interval", "0"]
    assert microscope.main([*argv, "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("microscope: 1/2 FoilHole_")
    assert "_fractions.mrc written (" in lines[1]
    assert len(list(dest.rglob("*_fractions.mrc"))) == 2
    assert len(_read_manifest(tmp_path / "microscope.tsv")) == 2


@pytest.mark.parametrize("make", [True, False])
def test_cli_without_movies_fails_naming_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: bool
) -> None:
    source = tmp_path / "empty_source"
    if make:
        source.mkdir()
        (source / "readme.txt").write_text("no movies here")
    code = microscope.main(["--source", str(source), "--dest", str(tmp_path / "dest")])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.splitlines()) == 1 and str(source) in err
    assert not (tmp_path / "dest").exists()
