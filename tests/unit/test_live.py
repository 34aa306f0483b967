"""cryosnake.live: the watcher, the ledger and the decisions of a session (no workflow)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cryosnake.errors import CryosnakeError, FileFormatError
from cryosnake.live.ledger import (
    HEADER,
    CycleRecord,
    Ledger,
    cycle_detail,
    parse_cycle,
    read_events,
)
from cryosnake.live.session import Session, Settings
from cryosnake.live.staging import LocalStaging
from cryosnake.live.watch import Arrival, FolderWatcher, is_movie


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


EPU_DATA = "Images-Disc1/GridSquare_12345678/Data"


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def test_is_movie_knows_epu_names() -> None:
    data = Path(EPU_DATA)
    assert is_movie(data / "FoilHole_1_Data_2_3_20261204_101010_fractions.tiff")
    assert is_movie(data / "FoilHole_1_Data_2_3_20261204_101010_EER.eer")
    assert not is_movie(data / "FoilHole_1_Data_2_3_20261204_101010.mrc")  # EPU's own sum
    assert not is_movie(data / "FoilHole_1_Data_2_3_20261204_101010.xml")
    assert is_movie(Path("flat/movie_0001.mrc"))
    assert not is_movie(Path("flat/.movie_0001.mrc"))
    assert not is_movie(Path("flat/notes.txt"))


def test_a_growing_file_arrives_once_it_has_settled(tmp_path: Path) -> None:
    clock = Clock()
    watcher = FolderWatcher(tmp_path, settle=10, clock=clock)
    movie = _write(tmp_path / "movie_0001.tif", 100)
    assert watcher.poll() == [] and watcher.waiting == 1
    clock.now += 8
    with open(movie, "ab") as f:  # the detector writes more
        f.write(b"y" * 50)
    assert watcher.poll() == []
    clock.now += 9  # 9 s since it last changed
    assert watcher.poll() == []
    clock.now += 1
    assert watcher.poll() == [Arrival("movie_0001", str(movie), 150)]
    clock.now += 100
    assert watcher.poll() == [] and watcher.waiting == 0  # reported once


def test_an_epu_movie_arrives_with_its_xml(tmp_path: Path) -> None:
    clock = Clock()
    watcher = FolderWatcher(tmp_path, settle=60, clock=clock)
    stem = "FoilHole_1_Data_2_3_20261204_101010"
    movie = _write(tmp_path / EPU_DATA / f"{stem}_fractions.tiff", 64)
    _write(tmp_path / EPU_DATA / f"{stem}.mrc", 64)  # EPU's sum: not a movie
    _write(tmp_path / EPU_DATA / f".{stem}_x.tiff", 64)  # hidden: a temporary name
    assert watcher.poll() == []
    _write(tmp_path / EPU_DATA / f"{stem}.xml", 10)
    assert watcher.poll() == [Arrival(f"{stem}_fractions", str(movie), 64)]


def test_empty_and_vanished_files_do_not_arrive(tmp_path: Path) -> None:
    clock = Clock()
    watcher = FolderWatcher(tmp_path, settle=1, clock=clock)
    empty = _write(tmp_path / "a.mrc", 0)
    gone = _write(tmp_path / "b.mrc", 10)
    assert watcher.poll() == []
    gone.unlink()
    clock.now += 5
    assert watcher.poll() == [] and watcher.waiting == 1  # the empty one
    empty.write_bytes(b"z")
    clock.now += 5
    assert [a.movie for a in watcher.poll()] == []
    clock.now += 5
    assert [a.movie for a in watcher.poll()] == ["a"]


def test_known_movies_are_not_reported_and_a_second_name_is_an_error(tmp_path: Path) -> None:
    clock = Clock()
    first = _write(tmp_path / "one" / "movie_0001.tif", 10)
    watcher = FolderWatcher(tmp_path, settle=0, known={"movie_0001": str(first)}, clock=clock)
    assert watcher.poll() == []
    _write(tmp_path / "two" / "movie_0001.tif", 10)
    with pytest.raises(CryosnakeError, match="a second movie named 'movie_0001'"):
        watcher.poll()


def test_watching_a_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CryosnakeError, match="no such folder"):
        FolderWatcher(tmp_path / "nowhere", settle=1)


def test_the_ledger_survives_a_line_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "live" / "events.tsv"
    ledger = Ledger.open(path)
    ledger.add("arrived", "m1", "/data/m1.tif")
    ledger.add("staged", "m1", "results/live/movies/m1.tif")
    ledger.add("cycle", "", "preprocess ok 3.0 s particles=4 kept=0")
    with open(path, "a", encoding="utf-8") as f:
        f.write("1796400000.000\tarri")  # killed while writing
    again = Ledger.open(path)
    assert again.arrived == {"m1": "/data/m1.tif"} and again.processed == {}
    again.add("processed", "m1", "chunk0001")
    events = read_events(path)
    assert events["event"].tolist() == ["arrived", "staged", "cycle", "processed"]
    assert path.read_text().startswith(HEADER + "\n")
    with pytest.raises(ValueError):
        again.add("arrived", "m\t2")


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.tsv"
    path.write_text("movie\tchunk\n")
    with pytest.raises(FileFormatError, match="not a live session ledger"):
        Ledger.open(path)
    path.write_text(f"{HEADER}\n1.0\tlanded\tm\t\n")
    with pytest.raises(FileFormatError, match="line 2"):
        read_events(path)


def test_staging_links_each_movie_once(tmp_path: Path) -> None:
    movie = _write(tmp_path / "watch" / "m1.tif", 10)
    staging = LocalStaging(tmp_path / "results" / "live" / "movies")
    arrival = Arrival("m1", str(movie), 10)
    link = Path(staging.stage(arrival))
    assert link.is_symlink() and link.read_bytes() == movie.read_bytes()
    assert staging.stage(arrival) == str(link)
    assert staging.pattern == str(tmp_path / "results" / "live" / "movies" / "*")
    assert os.listdir(link.parent) == ["m1.tif"]


# ---------------------------------------------------------------- the session's cycles


class FakeWatcher:
    def __init__(self) -> None:
        self.next: list[Arrival] = []
        self.waiting = 0

    def poll(self) -> list[Arrival]:
        out, self.next = self.next, []
        return out


class FakeStaging:
    pattern = "staged/*"

    def stage(self, arrival: Arrival) -> str:
        return f"staged/{arrival.movie}.tif"


class Run:
    """A workflow run that ends when the test says so."""

    def __init__(self) -> None:
        self.code: int | None = None

    def poll(self) -> int | None:
        return self.code


class FakeRunner:
    """Records the runs; ``finish`` ends them: the chunk lane gives the movies staged
    before it chunks, each movie brings 10 particles, 2D keeps half."""

    def __init__(self, results: FakeResults) -> None:
        self.results = results
        self.runs: list[tuple[str, list[str], Path, Run, list[str]]] = []

    def start(self, kind: str, targets: Sequence[str], overlay: Path) -> tuple[Any, Path, int]:
        run = Run()
        self.runs.append((kind, list(targets), overlay, run, self.results.staged()))
        return run, Path(f"cycle-{len(self.runs)}.log"), len(self.runs)

    def finish(self, code: int = 0) -> list[str]:
        """End every running run; their kinds."""
        ended = []
        for kind, _, _, run, staged in self.runs:
            if run.code is None:
                run.code = code
                ended.append(kind)
                if kind == "chunks" and code == 0:
                    self.results.table.update({m: "chunk0001" for m in staged})
        return ended


class FakeResults:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.table: dict[str, str] = {}

    def staged(self) -> list[str]:
        return list(self.ledger.staged)

    def chunk_table(self) -> dict[str, str]:
        return self.table

    def particles(self, name: str) -> int:
        n = 10 * len(self.table)
        return n if name == "particles.star" else n // 2


def _session(tmp_path: Path, clock: Clock, **settings: Any) -> tuple[Session, FakeWatcher]:
    ledger = Ledger.open(tmp_path / "events.tsv")
    results = FakeResults(ledger)
    watcher = FakeWatcher()
    defaults: dict[str, Any] = {
        "chunk_size": 3,
        "chunk_period": 60,
        "class2d_every": 40,
        "map3d": True,
        "map3d_min_particles": 20,
        "stop_after_idle": 300,
        "poll": 0,
    }
    lists: list[list[str]] = []

    def session_config(movies: list[str]) -> Path:
        lists.append(movies)
        return tmp_path / f"session-{len(lists)}.yaml"

    session = Session(
        watcher,
        FakeStaging(),
        ledger,
        FakeRunner(results),  # type: ignore[arg-type]
        results,
        Settings(**{**defaults, **settings}),
        chunk_config=tmp_path / "chunks.yaml",
        session_config=session_config,
        say=lambda line: None,
        clock=clock,
    )
    session.lists = lists  # type: ignore[attr-defined]
    return session, watcher


def _arrive(watcher: FakeWatcher, *names: str) -> None:
    watcher.next += [Arrival(n, f"/watch/{n}.tif", 100) for n in names]


def _started(session: Session) -> list[str]:
    """One step of the session; the kinds of the runs it started."""
    runner: FakeRunner = session.runner  # type: ignore[assignment]
    before = len(runner.runs)
    assert session.step()
    return [kind for kind, *_ in runner.runs[before:]]


def test_cycles_start_when_a_chunk_fills_or_waits_too_long(tmp_path: Path) -> None:
    clock = Clock()
    session, watcher = _session(tmp_path, clock)
    runner: FakeRunner = session.runner  # type: ignore[assignment]
    _arrive(watcher, "m1", "m2")
    assert _started(session) == []  # 2 of 3: the chunk waits
    clock.now += 30
    _arrive(watcher, "m3")
    assert _started(session) == ["chunks"]  # full
    _arrive(watcher, "m4")  # arrives while the chunk runs: waits for the next one
    assert _started(session) == []
    runner.finish()
    assert _started(session) == ["curate"]  # the session lane takes the new chunk
    assert session.ledger.processed == {m: "chunk0001" for m in ("m1", "m2", "m3")}
    assert session.lists[-1] == [f"staged/{m}.tif" for m in ("m1", "m2", "m3")]  # type: ignore[attr-defined]
    clock.now += 59
    assert _started(session) == []
    clock.now += 1
    assert _started(session) == ["chunks"]  # m4 waited chunk_period, while curate runs
    assert runner.runs[-1][2] == tmp_path / "chunks.yaml"
    assert runner.finish() == ["curate", "chunks"]
    assert _started(session) == ["curate"]  # m4's chunk
    runner.finish()
    # 40 particles: 2D; 20 kept: 3D; then nothing until more movies come.
    assert _started(session) == ["2d"]
    assert runner.runs[-1][1] == ["live_curate", "live_2d"]
    runner.finish()
    assert _started(session) == ["3d"]
    runner.finish()
    assert _started(session) == []
    clock.now += 300
    assert _started(session) == ["final"]
    runner.finish()
    assert not session.step()  # the session ends with its final run


def test_a_failing_lane_ends_the_session_after_three_tries(tmp_path: Path) -> None:
    clock = Clock()
    session, watcher = _session(tmp_path, clock)
    runner: FakeRunner = session.runner  # type: ignore[assignment]
    _arrive(watcher, "m1", "m2", "m3")
    for _ in range(2):
        assert _started(session) == ["chunks"]
        runner.finish(1)
    assert _started(session) == ["chunks"]
    runner.finish(1)
    with pytest.raises(CryosnakeError, match="failed 3 times in a row"):
        session.step()


def test_an_idle_session_without_movies_just_ends(tmp_path: Path) -> None:
    clock = Clock()
    session, _ = _session(tmp_path, clock)
    assert session.step()
    clock.now += 300
    assert not session.step()


def test_a_restarted_session_goes_on_where_it_stopped(tmp_path: Path) -> None:
    clock = Clock()
    session, watcher = _session(tmp_path, clock)
    runner: FakeRunner = session.runner  # type: ignore[assignment]
    _arrive(watcher, "m1", "m2", "m3")
    assert _started(session) == ["chunks"]
    runner.finish()
    _arrive(watcher, "m4")
    session.step()  # m4 staged, then the session is killed before its chunk runs
    again, watcher = _session(tmp_path, clock)
    assert set(again.waiting) == {"m4"}
    _arrive(watcher, "m1", "m2", "m3", "m4")  # a new watcher sees them all again
    assert _started(again) == ["chunks", "curate"]  # at once: m4 has waited
    again.runner.finish()  # type: ignore[attr-defined]
    again.step()
    events = read_events(tmp_path / "events.tsv")
    for kind in ("arrived", "staged", "processed"):
        movies = events.query("event == @kind")["movie"].tolist()
        assert sorted(movies) == ["m1", "m2", "m3", "m4"], kind


def test_cycle_details_are_read_back() -> None:
    record = CycleRecord("2d", True, 12.5, 400, 120)
    assert cycle_detail(record) == "2d ok 12.5 s particles=400 kept=120"
    assert parse_cycle(cycle_detail(record)) == record
    assert parse_cycle("final failed 1.0 s particles=0 kept=0") == ("final", False, 1.0, 0, 0)
    assert parse_cycle("something else") is None


def test_the_ledger_is_mirrored_and_restored(tmp_path: Path) -> None:
    kept: list[str] = []
    ledger = Ledger.open(tmp_path / "a" / "events.tsv", mirror=kept.append)
    ledger.add("arrived", "m1", "s3://lab/epu/m1.tif")
    ledger.add("staged", "m1", "s3://lab/proj/results/live/movies/m1.tif")
    assert kept == []
    ledger.sync()
    ledger.sync()
    assert len(kept) == 1 and kept[0].count("\n") == 3
    # Another machine: the ledger comes back from its copy.
    again = Ledger.open(tmp_path / "b" / "events.tsv", kept=kept[0])
    assert again.staged == {"m1": "s3://lab/proj/results/live/movies/m1.tif"}
