"""``cryosnake dag``: pictures of the repository's workflow on the demo configuration.

Snakemake really runs (``--rulegraph``/``--dag``, nothing is executed) in the repository
root with config/config.yaml; the demo data need not exist, since with simulate enabled
the jobs follow from the configuration. The pictures are checked against the rules that
``snakemake --list-rules`` names and against each other (SVG and Mermaid edges agree).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from cryosnake import cli
from cryosnake.dag import extract_dot, extract_mermaid
from cryosnake.errors import CryosnakeError

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"
FILES = ["rulegraph.svg", "dag.svg", "rulegraph.mmd", "dag.mmd"]
pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz dot"),
]


def run_dag(out_dir: Path, *args: str) -> tuple[int, str, str]:
    """``cryosnake dag --out-dir OUT ARGS`` in the repository root: (code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        pytest.MonkeyPatch.context() as mp,
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        mp.chdir(ROOT)
        try:
            code = cli.main(["dag", "--out-dir", str(out_dir), *args])
        except SystemExit as exc:  # argparse errors and --help
            code = exc.code if isinstance(exc.code, int) else 1
    return code, stdout.getvalue(), stderr.getvalue()


def svg_graph(path: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """Rule names of the nodes and (from, to) rule-name edges of a graphviz SVG."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG}svg"
    labels: dict[str, str] = {}  # dot node id -> rule (first text line of the node)
    edges = []
    for group in root.iter(f"{SVG}g"):
        title = group.findtext(f"{SVG}title", default="")
        if group.get("class") == "node":
            labels[title] = group.findtext(f"{SVG}text", default="").strip()
        elif group.get("class") == "edge":
            edges.append(title.split("->"))
    return set(labels.values()), {(labels[a], labels[b]) for a, b in edges}


def mermaid_graph(path: Path) -> tuple[set[str], set[tuple[str, str]]]:
    """Rule names of the nodes and (from, to) rule-name edges of a Mermaid flowchart."""
    lines = path.read_text().splitlines()
    if lines[0] == "---":  # front matter (title)
        lines = lines[lines.index("---", 1) + 1 :]
    assert re.match(r"(flowchart|graph) (TB|TD|BT|LR|RL)$", lines[0]), lines[0]
    labels = {}  # "id3" -> rule; a DAG label may add wildcards: "inspect - movie: m1"
    edges = []
    for line in lines[1:]:
        if node := re.fullmatch(r"\s*(\w+)\[(.*)\]", line):
            labels[node[1]] = node[2].split(" - ")[0].strip()
        elif edge := re.fullmatch(r"\s*(\w+) --> (\w+)", line):
            edges.append((edge[1], edge[2]))
    return set(labels.values()), {(labels[a], labels[b]) for a, b in edges}


@pytest.fixture(scope="session")
def rule_names() -> set[str]:
    """The rules of the workflow, as ``snakemake --list-rules`` prints them, but the
    targets of ``cryosnake live`` (``live_*``), which the graphs of ``all`` leave out."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--list-rules"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names = set(proc.stdout.split())
    assert {"simulate", "inspect", "motioncor", "ctf", "curate", "all", "live_chunks"} <= names
    return {name for name in names if not name.startswith("live_")}


@pytest.fixture(scope="session")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``cryosnake dag`` with the default profile and formats: (out dir, stdout)."""
    out = tmp_path_factory.mktemp("dag") / "pictures"
    code, stdout, stderr = run_dag(out)
    assert code == 0, stderr
    return out, stdout


def test_writes_the_four_pictures_and_prints_their_paths(pictures: tuple[Path, str]) -> None:
    out, stdout = pictures
    assert stdout.splitlines() == [str(out / name) for name in FILES]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temporary left


def test_svgs_show_every_rule(pictures: tuple[Path, str], rule_names: set[str]) -> None:
    out, _ = pictures
    rules, edges = svg_graph(out / "rulegraph.svg")
    assert rules == rule_names
    assert {("motioncor", "ctf"), ("ctf", "curate"), ("inspect", "motioncor")} <= edges
    jobs, job_edges = svg_graph(out / "dag.svg")
    assert jobs == rule_names
    assert job_edges == edges  # the job graph collapsed to rules is the rule graph


def test_mermaid_files_show_every_rule_and_edge(
    pictures: tuple[Path, str], rule_names: set[str]
) -> None:
    out, _ = pictures
    rules, edges = mermaid_graph(out / "rulegraph.mmd")
    assert rules == rule_names
    assert {("motioncor", "ctf"), ("ctf", "curate"), ("inspect", "motioncor")} <= edges
    assert edges == svg_graph(out / "rulegraph.svg")[1]
    jobs, job_edges = mermaid_graph(out / "dag.mmd")
    assert jobs == rule_names
    assert job_edges == edges
    # One job per chunk for the per-movie rules: the 6 demo movies are one chunk.
    assert re.findall(r"\[inspect - chunk: (chunk\d+)\]", (out / "dag.mmd").read_text()) == [
        "chunk0001"
    ]


def test_extra_arguments_reach_snakemake(tmp_path: Path, rule_names: set[str]) -> None:
    # --omit-from prunes the graph (--until only changes which jobs would run).
    code, _, stderr = run_dag(tmp_path, "--", "--omit-from", "curate")
    assert code == 0, stderr
    for name in ("rulegraph.svg", "dag.svg"):
        rules, edges = svg_graph(tmp_path / name)
        assert "ctf" in rules and ("motioncor", "ctf") in edges
        assert "curate" not in rules and "all" not in rules
    for name in ("rulegraph.mmd", "dag.mmd"):
        rules, _ = mermaid_graph(tmp_path / name)
        assert {"inspect", "motioncor", "ctf"} <= rules <= rule_names - {"curate", "all"}


def test_mermaid_needs_no_dot_and_configfile_passes_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every program on PATH but dot (snakemake needs e.g. `which`), without .venv/bin:
    # snakemake is found next to the Python that runs cryosnake.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    venv_bin = Path(sys.executable).parent
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not folder or Path(folder) == venv_bin or not Path(folder).is_dir():
            continue
        for program in Path(folder).iterdir():
            link = bin_dir / program.name
            if program.name != "dot" and not link.exists() and not link.is_symlink():
                link.symlink_to(program)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which("dot") is None
    config = tmp_path / "two_movies.yaml"  # merged into config/config.yaml
    config.write_text("simulate:\n  n_movies: 2\ninput:\n  chunk_size: 1\n")
    out = tmp_path / "out"
    code, stdout, stderr = run_dag(out, "--formats", "mermaid", "--", "--configfile", str(config))
    assert code == 0, stderr
    assert stdout.splitlines() == [str(out / "rulegraph.mmd"), str(out / "dag.mmd")]
    dag = (out / "dag.mmd").read_text()
    assert re.findall(r"\[inspect - chunk: (chunk\d+)\]", dag) == ["chunk0001", "chunk0002"]


def test_missing_dot_is_one_line_naming_graphviz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, stdout, stderr = run_dag(tmp_path / "out")
    assert code == 1 and stdout == ""
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("cryosnake dag: error:")
    assert "'dot'" in stderr and "apt-get install graphviz" in stderr
    assert not (tmp_path / "out").exists()


def test_snakemake_failure_is_its_last_line(tmp_path: Path) -> None:
    code, _, stderr = run_dag(tmp_path / "out", "--formats", "mermaid", "--", "--until", "nosuch")
    assert code == 1
    assert len(stderr.splitlines()) == 1, stderr
    assert "No rule to produce nosuch" in stderr
    assert not (tmp_path / "out").exists()


def test_no_snakefile_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: Callable
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["dag"])
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and "no Snakefile" in err
    assert not (tmp_path / "results").exists()


def test_help_shows_an_example(run_cli: Callable) -> None:
    code, out, _ = run_cli(["dag", "--help"])
    assert code == 0
    assert "cryosnake dag" in out and "Example::" in out


def test_graphs_are_cut_out_of_other_output() -> None:
    dot = 'digraph snakemake_dag {\n\t0[label = "all"];\n}\n'
    assert extract_dot("print from a Snakefile\n" + dot + "trailing\n") == dot
    mermaid = "---\ntitle: DAG\n---\nflowchart TB\n\tid0[all]\n"
    assert extract_mermaid("noise\n---\n" + mermaid) == mermaid
    assert extract_mermaid("noise\nflowchart TB\n\tid0[all]") == "flowchart TB\n\tid0[all]\n"
    with pytest.raises(CryosnakeError, match="no dot graph"):
        extract_dot("nothing\n")
    with pytest.raises(CryosnakeError, match="no mermaid graph"):
        extract_mermaid("nothing\n")


def test_readme_pipeline_names_every_rule(rule_names: set[str]) -> None:
    """The README's picture of the pipeline names every rule (but the target all), and
    no rule that does not exist."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    drawn = set(re.findall(r"\b([a-z][a-z0-9_]*)\b", block)) - {"flowchart", "lr", "demo", "data"}
    # class3d is drawn dotted: a rule only when class3d.classes > 0 (not in the demo)
    assert drawn == (rule_names - {"all"}) | {"class3d"}
    # and the documents it links to exist
    for link in re.findall(r"\]\(((?:docs|config|containers|benchmarks)/[^)]+)\)", text):
        assert (ROOT / link).is_file(), link
