"""Chunks of movies (cryosnake.chunks) and the chunk command's bookkeeping."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cryosnake.chunks import assign_chunks, chunk_name, parse_chunk_table
from cryosnake.errors import ConfigError, CryosnakeError, FileFormatError
from cryosnake.stages import chunk
from cryosnake.stages._common import stage_parser


def test_movies_fill_chunks_in_name_order() -> None:
    table = assign_chunks(["m05", "m01", "m03", "m02", "m04"], 2)
    assert table.chunks == {
        "chunk0001": ["m01", "m02"],
        "chunk0002": ["m03", "m04"],
        "chunk0003": ["m05"],
    }
    assert table.new == ["m01", "m02", "m03", "m04", "m05"]
    assert parse_chunk_table(table.text, "t") == {
        "m01": "chunk0001", "m02": "chunk0001", "m03": "chunk0002", "m04": "chunk0002",
        "m05": "chunk0003",
    }  # fmt: skip


def test_a_movie_keeps_its_chunk_when_movies_are_added() -> None:
    """Movies added later (even ones that sort first) fill new chunks; the chunks that
    exist keep exactly their movies, so their jobs do not rerun."""
    first = assign_chunks(["m02", "m03", "m04"], 2)
    kept = parse_chunk_table(first.text, "chunks.tsv")
    later = assign_chunks(["m01", "m02", "m03", "m04", "m05", "m06"], 2, kept)
    assert later.chunks["chunk0001"] == first.chunks["chunk0001"] == ["m02", "m03"]
    assert later.chunks["chunk0002"] == first.chunks["chunk0002"] == ["m04"]
    assert later.chunks["chunk0003"] == ["m01", "m05"] and later.chunks["chunk0004"] == ["m06"]
    assert later.new == ["m01", "m05", "m06"]
    assert later.text.startswith(first.text)  # only appended to
    # Nothing new: the same table, nothing to write.
    again = assign_chunks(
        ["m01", "m02", "m03", "m04", "m05", "m06"], 5, parse_chunk_table(later.text, "t")
    )
    assert again.new == [] and again.chunks == later.chunks and again.text == later.text
    # A movie whose file is gone leaves its chunk; its line stays in the table.
    gone = assign_chunks(["m02", "m04"], 2, kept)
    assert gone.chunks == {"chunk0001": ["m02"], "chunk0002": ["m04"]} and "m03" in gone.text


def test_chunk_names_sort_by_number() -> None:
    assert chunk_name(7) == "chunk0007" and chunk_name(12345) == "chunk12345"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a chunk table"),
        ("name\tchunk\n", "not a chunk table"),
        ("movie\tchunk\nm1\n", "line 2"),
        ("movie\tchunk\nm1\tc1\n", "line 2"),
        ("movie\tchunk\nm1\tchunk0001\nm1\tchunk0002\n", "listed twice"),
    ],
)
def test_a_bad_chunk_table_is_one_line_naming_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_chunk_table(text, "results/chunks.tsv")
    assert str(err.value).startswith("results/chunks.tsv: ")


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"input\.chunk_size"):
        assign_chunks(["m1"], 0)


def _args(argv: list[str]) -> argparse.Namespace:
    parser = stage_parser("chunk", chunk.__doc__)
    chunk.add_args(parser)
    return parser.parse_args(argv)


def test_each_stage_gets_its_files_for_one_movie() -> None:
    head, stage = chunk.split_argv(
        ["extract", "--micrographs", "mic", "--ctf-dir", "ctf", "--pick-dir", "pick",
         "--out-dir", "out", "--", "--pixel-size", "1.5"]
    )  # fmt: skip
    assert stage == ["--pixel-size", "1.5"]
    args = _args(head)
    assert chunk.movie_options(args, "m1") == [
        "--micrograph", "mic/m1.mrc", "--coords", "pick/m1.star", "--ctf", "ctf/m1.star",
        "--out-dir", "out",
    ]  # fmt: skip
    args = _args(["ctf", "--micrographs", "mic", "--out-dir", "out"])
    assert chunk.movie_options(args, "m1")[:2] == ["--micrograph", "mic/m1_noDW.mrc"]
    with pytest.raises(CryosnakeError, match="chunk pick: --ctf-dir is required"):
        chunk.check_options(_args(["pick", "--micrographs", "mic", "--out-dir", "o"]))


def test_motioncor_leaves_out_the_movies_inspect_rejected(tmp_path: Path) -> None:
    reports = tmp_path / "inspect"
    reports.mkdir()
    (reports / "a.json").write_text(json.dumps({"movie": "a.tiff", "n_frames": 10}))
    (reports / "b.json").write_text(json.dumps({"movie": "b.tiff", "rejected": "truncated"}))
    assert chunk._accepted(["x/a.tiff", "x/b.tiff"], str(reports)) == ["x/a.tiff"]
    with pytest.raises(FileFormatError, match=r"c\.json: no inspect report for x/c\.tiff"):
        chunk._accepted(["x/c.tiff"], str(reports))
    (reports / "d.json").write_text("{not json")
    with pytest.raises(FileFormatError, match=r"d\.json: unreadable inspect report"):
        chunk._accepted(["x/d.tiff"], str(reports))


def test_later_stages_take_the_micrographs_motioncor_wrote(tmp_path: Path) -> None:
    for name in ("b_noDW.mrc", "b.mrc", "a_noDW.mrc", "a.mrc", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert chunk._micrograph_names(str(tmp_path)) == ["a", "b"]
    with pytest.raises(FileFormatError, match="no such folder"):
        chunk._micrograph_names(str(tmp_path / "missing"))
