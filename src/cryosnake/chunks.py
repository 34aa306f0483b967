"""Chunks: the groups of movies that one per-movie job processes.

The per-movie stages (inspect, motioncor, ctf, pick, extract) run one job per chunk of
``input.chunk_size`` movies rather than one job per movie: a session of 10,000 movies
is a few hundred jobs, which Snakemake plans in seconds and AWS Batch or SLURM starts
without the cost of one container per movie.

A movie keeps its chunk for ever: the assignment is kept in ``results/chunks.tsv``
(two columns, ``movie`` and ``chunk``), written by the process that plans the jobs,
and only ever appended to. Movies seen for the first time fill new chunks, in name
order, so adding movies (a session still being collected) never changes the content
of a chunk that exists, and never reruns its jobs. A movie listed there whose file is
gone leaves its chunk (which then reruns without it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cryosnake.errors import ConfigError

__all__ = ["CHUNK_PATTERN", "ChunkTable", "assign_chunks", "chunk_name", "parse_chunk_table"]

# A chunk's name: "chunk" and its number (wildcard constraint of the rules).
CHUNK_PATTERN = r"chunk[0-9]+"
HEADER = "movie\tchunk"


def chunk_name(number: int) -> str:
    """``chunk0001`` for 1 (at least four digits, so that names sort by number)."""
    return f"chunk{number:04d}"


def parse_chunk_table(text: str, source: str) -> dict[str, str]:
    """Movie -> chunk of a ``chunks.tsv`` text (``source`` names it in errors).

    Raises
    ------
    ConfigError
        Not a chunk table (a header other than ``movie<TAB>chunk``, a line without two
        fields, a chunk name that is not ``chunkNNNN``, or a movie listed twice).
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ConfigError(f"{source}: not a chunk table (first line must be 'movie<TAB>chunk')")
    table: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].startswith("chunk") or not fields[1][5:].isdigit():
            raise ConfigError(f"{source}: line {number} is not '<movie><TAB>chunkNNNN'")
        movie, chunk = fields
        if movie in table:
            raise ConfigError(f"{source}: movie {movie!r} is listed twice (line {number})")
        table[movie] = chunk
    return table


class ChunkTable:
    """The chunks of a run: ``chunks`` (name -> movies, in name order) and ``text``
    (the ``chunks.tsv`` to keep: the old lines, then the new movies); ``new``: movies
    that had no chunk before (the file needs writing)."""

    def __init__(self, chunks: dict[str, list[str]], text: str, new: list[str]) -> None:
        self.chunks = chunks
        self.text = text
        self.new = new

    def movies(self, chunk: str) -> list[str]:
        """The movies of ``chunk``."""
        return self.chunks[chunk]


def assign_chunks(
    movies: Iterable[str], size: int, previous: Mapping[str, str] | None = None
) -> ChunkTable:
    """Chunks of ``movies`` (names), ``size`` movies each, keeping ``previous``
    (:func:`parse_chunk_table`) for the movies it lists; the others fill new chunks,
    numbered after the highest existing one, in name order."""
    if size < 1:
        raise ConfigError(f"input.chunk_size: must be >= 1, got {size}")
    previous = dict(previous or {})
    present = sorted(set(movies))
    new = [m for m in present if m not in previous]
    last = max((int(c[5:]) for c in previous.values()), default=0)
    assigned = dict(previous)
    for i, movie in enumerate(new):
        assigned[movie] = chunk_name(last + 1 + i // size)
    chunks: dict[str, list[str]] = {}
    for movie in present:
        chunks.setdefault(assigned[movie], []).append(movie)
    ordered = dict(sorted(chunks.items(), key=lambda item: int(item[0][5:])))
    lines = [HEADER, *(f"{m}\t{c}" for m, c in previous.items())]
    lines += [f"{m}\t{assigned[m]}" for m in new]
    return ChunkTable(ordered, "\n".join(lines) + "\n", new)
