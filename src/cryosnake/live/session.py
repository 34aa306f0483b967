"""The loop of a live session: watch, stage, run the workflow in cycles, refresh.

Every ``poll`` seconds the session looks for complete movies (:mod:`.watch`), stages
them (:mod:`.staging`) and writes both to its ledger (:mod:`.ledger`). It runs the
workflow in *cycles*, on two lanes at once, while it goes on watching:

the chunk lane
    ``chunks``: when ``chunk_size`` staged movies wait, or the oldest has waited
    ``chunk_period`` seconds, the per-movie stages of the new chunks (the workflow's
    target ``live_chunks``: motion correction, CTF, picks, particles). Chunks are kept
    in the chunk table, so only new chunks run; their movies are then ``processed`` in
    the ledger.
the session lane
    ``curate`` after new chunks (import, curation and the particles of the selected
    micrographs: ``live_curate``; curation thresholds are absolute, so a micrograph's
    verdict never changes once made); ``2d`` when the particles grew by
    ``class2d_every`` since the last 2D classification (``live_2d``); ``3d`` when
    ``map3d_min_particles`` particles are kept and at least twice as many as at the
    last 3D run (``all``: ab initio, refinement, post-processing, report); ``final``
    when nothing has arrived for ``stop_after_idle`` seconds and every movie is
    processed (``all``), after which the session ends.

The session lane's runs see only the movies already processed (``input.movies`` is
their list, ``session_config``), so they never plan a chunk that the chunk lane is
running, and the two Snakemake runs never lock the same file: a long 2D or 3D run
does not hold up the movies that keep arriving.

A cycle that fails is retried at the next decision; three failures in a row on a lane
end the session with the error. After each cycle the session report (``refresh``) is
redrawn.

Nothing is kept in memory that the ledger, the chunk table and the workflow's outputs do
not hold, so a session killed at any moment and started again loses no movie (those
staged and not processed are processed by its first cycle) and does nothing twice
(Snakemake reruns only what is missing or incomplete). The workflow runs as a child
that is stopped with the session (also when it is killed), so that a restart never
finds the results locked by an orphan.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryosnake.errors import CryosnakeError
from cryosnake.live.ledger import CycleRecord, Ledger, cycle_detail, parse_cycle, read_events
from cryosnake.live.watch import Arrival

__all__ = ["Cycle", "Session", "Settings", "WorkflowRunner"]

FAILURES_IN_A_ROW = 3
# The targets of each kind of cycle (live_*: the workflow's rules of those names).
TARGETS = {
    "chunks": ["live_chunks"],
    "curate": ["live_curate"],
    "2d": ["live_curate", "live_2d"],
    "3d": ["all"],
    "final": ["all"],
}
CHUNK_LANE, SESSION_LANE = "chunks", "session"


class Watcher(Protocol):
    @property
    def waiting(self) -> int: ...

    def poll(self) -> list[Arrival]: ...


class Staging(Protocol):
    pattern: str

    def stage(self, arrival: Arrival) -> str: ...


class Results(Protocol):
    def chunk_table(self) -> dict[str, str]: ...

    def particles(self, name: str) -> int: ...


@dataclass(frozen=True)
class Settings:
    """When to run the workflow (see the module's description); times in seconds."""

    chunk_size: int
    chunk_period: float
    class2d_every: int
    map3d: bool
    map3d_min_particles: int
    stop_after_idle: float | None
    poll: float


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to send the child SIGTERM when the session dies (even by SIGKILL)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


@dataclass
class WorkflowRunner:
    """Runs ``program + targets + --configfile configfiles overlay + options``
    (snakemake), each run's output in ``log_dir``/``cycle-NNNN-KIND.log``."""

    program: list[str]
    configfiles: list[str]
    options: list[str]
    log_dir: Path

    def start(self, kind: str, targets: Sequence[str], overlay: Path) -> tuple[Any, Path, int]:
        """Start a run; (the process, its log, its number: one more than the last log's,
        so that a restarted session keeps the logs of the runs it was killed in)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        numbers = [int(p.name.split("-")[1]) for p in self.log_dir.glob("cycle-[0-9]*-*.log")]
        number = max(numbers, default=0) + 1
        log = self.log_dir / f"cycle-{number:04d}-{kind}.log"
        configs = ["--configfile", *self.configfiles, str(overlay)]
        with open(log, "w", encoding="utf-8") as out:
            proc = subprocess.Popen(
                [*self.program, *targets, *configs, *self.options],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        return proc, log, number


@dataclass
class Cycle:
    number: int
    kind: str
    proc: Any
    log: Path
    started: float
    processed: int  # movies processed when it started


class Session:
    """A live session over ``watcher``'s movies (see the module's description).

    session_config : writes the configuration overlay of the session lane's runs, given
        the workflow paths of the movies processed (returns its path)
    chunk_config : the configuration overlay of the chunk lane's runs
    refresh : called after every cycle (redraws the session's report)
    say : prints one progress line
    """

    def __init__(
        self,
        watcher: Watcher,
        staging: Staging,
        ledger: Ledger,
        runner: WorkflowRunner,
        results: Results,
        settings: Settings,
        chunk_config: Path,
        session_config: Callable[[list[str]], Path],
        refresh: Callable[[], None] = lambda: None,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watcher = watcher
        self.staging = staging
        self.ledger = ledger
        self.runner = runner
        self.results = results
        self.settings = settings
        self.chunk_config = chunk_config
        self.session_config = session_config
        self.refresh = refresh
        self.say = say
        self.clock = clock
        now = clock()
        self.last_arrival = now
        # Movies staged and not processed (a restarted session's are due at once).
        self.waiting: dict[str, float] = {
            m: now - settings.chunk_period for m in ledger.staged if m not in ledger.processed
        }
        self.particles_at_2d = 0
        self.kept_at_3d = 0
        self.particles = 0
        self.kept = 0
        self.curated = 0  # movies processed at the start of the last curation
        for detail in read_events(ledger.path).query("event == 'cycle'")["detail"]:
            parsed = parse_cycle(detail)
            if parsed is None or not parsed.ok:
                continue
            kind, particles, kept = parsed.kind, parsed.particles, parsed.kept
            if kind != "chunks":
                self.particles = particles
            if kind in ("2d", "3d", "final"):
                self.particles_at_2d, self.kept = particles, kept
            if kind in ("3d", "final"):
                self.kept_at_3d = kept
        self.failures = {CHUNK_LANE: 0, SESSION_LANE: 0}
        self.running: dict[str, Cycle] = {}

    # ------------------------------------------------------------------ watching

    def watch(self) -> None:
        """Record and stage the movies complete since the last look."""
        for arrival in self.watcher.poll():
            self.last_arrival = self.clock()
            if arrival.movie not in self.ledger.arrived:
                self.ledger.add("arrived", arrival.movie, arrival.source)
            if arrival.movie not in self.ledger.staged:
                self.ledger.add("staged", arrival.movie, self.staging.stage(arrival))
                self.say(f"live: {arrival.movie} arrived ({arrival.size / 2**20:.0f} MiB)")
            if arrival.movie not in self.ledger.processed:
                self.waiting.setdefault(arrival.movie, self.clock())
        self.ledger.sync()

    # ------------------------------------------------------------------ deciding

    def _chunks_due(self) -> bool:
        s = self.settings
        return bool(self.waiting) and (
            len(self.waiting) >= s.chunk_size
            or self.clock() - min(self.waiting.values()) >= s.chunk_period
        )

    def _session_due(self) -> str | None:
        """The next cycle of the session lane, "stop" (idle before any movie), or None."""
        s = self.settings
        if (
            s.stop_after_idle is not None
            and not self.waiting
            and CHUNK_LANE not in self.running
            and self.watcher.waiting == 0
            and self.clock() - self.last_arrival >= s.stop_after_idle
        ):
            return "final" if self.ledger.processed else "stop"
        if not self.ledger.processed:
            return None
        if self.curated < len(self.ledger.processed):
            return "curate"
        if self.particles > 0 and self.particles - self.particles_at_2d >= s.class2d_every:
            return "2d"
        if (
            s.map3d
            and self.kept >= s.map3d_min_particles
            and (self.kept_at_3d == 0 or self.kept >= 2 * self.kept_at_3d)
        ):
            return "3d"
        return None

    # ------------------------------------------------------------------ cycles

    def _start(self, lane: str, kind: str) -> None:
        if lane == CHUNK_LANE:
            overlay = self.chunk_config
        else:
            paths = sorted(self.ledger.staged[m] for m in self.ledger.processed)
            overlay = self.session_config(paths)
        proc, log, number = self.runner.start(kind, TARGETS[kind], overlay)
        processed = len(self.ledger.processed)
        self.running[lane] = Cycle(number, kind, proc, log, self.clock(), processed)
        new = f", {len(self.waiting)} movies new" if lane == CHUNK_LANE else ""
        self.say(f"live: cycle {number} ({kind}) started{new}")

    def _finish(self, lane: str, code: int) -> None:
        cycle = self.running.pop(lane)
        seconds = self.clock() - cycle.started
        ok = code == 0
        if not ok:
            self.failures[lane] += 1
        elif lane == CHUNK_LANE:
            self.failures[lane] = 0
            table = self.results.chunk_table()
            for movie in sorted(m for m in self.ledger.staged if m in table):
                if movie not in self.ledger.processed:
                    self.ledger.add("processed", movie, table[movie])
                self.waiting.pop(movie, None)
        else:
            self.failures[lane] = 0
            self.curated = cycle.processed
            self.particles = self.results.particles("particles.star")
            if cycle.kind != "curate":
                self.kept = self.results.particles("particles_selected.star")
                self.particles_at_2d = self.particles
            if cycle.kind in ("3d", "final"):
                self.kept_at_3d = self.kept
        status = "ok" if ok else "failed"
        record = CycleRecord(cycle.kind, ok, seconds, self.particles, self.kept)
        self.ledger.add("cycle", "", cycle_detail(record))
        self.ledger.sync()
        self.say(
            f"live: cycle {cycle.number} ({cycle.kind}) {status} in {seconds:.0f} s: "
            f"{len(self.ledger.processed)} of {len(self.ledger.staged)} movies processed, "
            f"{self.particles} particles, {self.kept} kept" + ("" if ok else f"; see {cycle.log}")
        )
        if self.failures[lane] >= FAILURES_IN_A_ROW:
            raise CryosnakeError(
                f"the workflow failed {FAILURES_IN_A_ROW} times in a row; the last run's "
                f"log: {cycle.log}"
            )
        self.refresh()

    def step(self) -> bool:
        """One look: watch, collect the cycles that ended, start those due; False once
        the final cycle has succeeded."""
        self.watch()
        for lane, cycle in list(self.running.items()):
            code = cycle.proc.poll()
            if code is None:
                continue
            self._finish(lane, code)
            if cycle.kind == "final" and code == 0 and not self.waiting:
                return False  # (a movie that came during the final run is processed first)
        if CHUNK_LANE not in self.running and self._chunks_due():
            self._start(CHUNK_LANE, "chunks")
        if SESSION_LANE not in self.running:
            kind = self._session_due()
            if kind == "stop":
                self.say("live: idle, and no movie has arrived")
                return False
            if kind == "final":
                self.say("live: idle, running the whole workflow")
            if kind is not None:
                self._start(SESSION_LANE, kind)
        return True

    def run(self) -> int:
        """Watch and process until idle for ``stop_after_idle`` (never when None), then
        run the whole workflow; 0 when it succeeds."""
        self.say(
            f"live: watching; {len(self.ledger.staged)} movies staged before, "
            f"{len(self.waiting)} to process"
        )
        try:
            while self.step():
                time.sleep(self.settings.poll)
            self.say("live: session finished")
            return 0
        finally:
            self._stop()

    def _stop(self) -> None:
        """Stop the cycles still running (an interrupted session) and wait for them."""
        for cycle in self.running.values():
            if cycle.proc.poll() is None:
                cycle.proc.send_signal(signal.SIGINT)
        for cycle in self.running.values():
            try:
                cycle.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                cycle.proc.kill()
                cycle.proc.wait()
