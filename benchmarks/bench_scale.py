"""Session scale (issue 18): planning, particle memory, STAR I/O and the report.

Four measurements, each against the size of a session, each written into one JSON
(``--out``, one section per part; a part run again replaces its section) and drawn
into one picture beside it (``.png``):

1. ``plan``: seconds of ``snakemake -n`` against the number of movies (500 to
   10,000 empty files), locally and with S3 as default storage on moto's server
   (:mod:`_scale_plan`); ``--before COMMIT`` also runs the rules of COMMIT (a git
   worktree) with its own package, one run each, up to ``--before-max`` movies
   (``--before-s3-max`` on S3: the old rules plan in time that grows with the square
   of the count, and on S3 make requests per file).
2. ``particles``: peak memory and seconds per iteration of class2d, initial3d and
   refine3d against the particle count (10k / 50k / 100k particles of 128 px) with
   ``CRYOSNAKE_MEMORY=2G`` (:mod:`_scale_particles`).
3. ``star``: STAR write and read against rows (10^4 to 10^6), starfile beside
   cryosnake's reader, and curate / merge-particles / select2d at 10,000 micrographs
   and 10^6 particles (:mod:`_scale_star`).
4. ``report``: ``cryosnake report`` at 100 / 1,000 / 10,000 movies: seconds and the
   size of the page (:mod:`_scale_report`).

Run from the repository (.venv)::

    .venv/bin/python benchmarks/bench_scale.py plan --before d8d47aa
    .venv/bin/python benchmarks/bench_scale.py particles
    .venv/bin/python benchmarks/bench_scale.py star
    .venv/bin/python benchmarks/bench_scale.py report
    .venv/bin/python benchmarks/bench_scale.py plot      # the picture from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _scale_plan

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "scale-cpu2.json"
COUNTS = (500, 2_000, 5_000, 10_000)


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def measure_plan(counts: tuple[int, ...], before: str | None, before_max: int,
                 before_s3_max: int, timeout: float) -> dict[str, Any]:  # fmt: skip
    """Seconds of a dry run against the movie count: this checkout's rules, and
    ``before``'s rules up to ``before_max`` movies; local and S3."""
    rows: dict[str, dict[str, float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="scale-plan-") as tmp:
        work = Path(tmp)
        workflows = {"after": ROOT}
        if before:
            workflows["before"] = _scale_plan.worktree(before, work / "before")
        s3 = _scale_plan.S3StandIn()
        try:
            for n in counts:
                for name, workflow in workflows.items():
                    if name == "before" and n > before_max:
                        continue
                    local = _scale_plan.plan_local(workflow, work, n, timeout)
                    on_s3 = (
                        None
                        if name == "before" and n > before_s3_max
                        else _scale_plan.plan_s3(workflow, work, n, s3, timeout)
                    )
                    rows.setdefault(name, {})[f"local_{n}"] = local
                    rows[name][f"s3_{n}"] = on_s3
                    print(f"plan {name}: {n} movies: local {local} s, S3 {on_s3} s", flush=True)
        finally:
            s3.stop()
            if before:
                _scale_plan.remove_worktree(work / "before")
    return {"counts": list(counts), "before_commit": before, "seconds": rows,
            "targets": {"local_10000": 30.0, "s3_10000": 90.0}}  # fmt: skip


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _plan_panel(ax: Any, section: dict[str, Any]) -> None:
    for name, style in (("after", "-o"), ("before", "--s")):
        seconds = section["seconds"].get(name, {})
        for where, color in (("local", "tab:blue"), ("s3", "tab:orange")):
            xs = [n for n in section["counts"] if seconds.get(f"{where}_{n}") is not None]
            if xs:
                ys = [seconds[f"{where}_{n}"] for n in xs]
                ax.plot(xs, ys, style, color=color, label=f"{name}, {where}")
    ax.axhline(30, color="tab:blue", lw=0.8, ls=":")
    ax.axhline(90, color="tab:orange", lw=0.8, ls=":")
    ax.set(xlabel="movies", ylabel="seconds of snakemake -n", yscale="log")
    ax.set_title("planning (targets dotted)", fontsize=10)


def _particles_panel(ax: Any, section: dict[str, Any]) -> None:
    twin = ax.twinx()
    for i, stage in enumerate(sorted({r["stage"] for r in section["runs"]})):
        runs = sorted((r for r in section["runs"] if r["stage"] == stage), key=lambda r: r["count"])
        xs = [r["count"] for r in runs]
        color = f"C{i}"
        ax.plot(xs, [r["peak_rss_mib"] / 1024 for r in runs], "-o", color=color, label=stage)
        per_iteration = [r["iteration_s"] for r in runs]  # a list per run
        if all(per_iteration):
            twin.plot(xs, [sum(v) / len(v) for v in per_iteration], "--s", color=color)
    budget = section["budget"]  # e.g. 2G
    gib = float(budget[:-1]) / (1024 if budget.upper().endswith("M") else 1)
    ax.axhline(gib, color="k", lw=0.8, ls=":", label=f"CRYOSNAKE_MEMORY={budget}")
    ax.set(xlabel="particles", ylabel="peak RSS, GiB (solid)")
    twin.set_ylabel("s per iteration (dashed)")
    ax.set_title(f"particles of {section.get('box')} px", fontsize=10)


def _star_panel(ax: Any, section: dict[str, Any]) -> None:
    for name, data in (("after", section.get("after")), ("before", section.get("before"))):
        if not data:
            continue
        rows = [r["rows"] for r in data["star"]]
        style = "-o" if name == "after" else "--s"
        for key, color in (("ours_write_s", "tab:red"), ("ours_read_s", "tab:green")):
            ax.plot(rows, [r[key] for r in data["star"]], style, color=color,
                    label=f"{name}: {key.split('_')[1]}")  # fmt: skip
    after = section.get("after")
    if after:
        rows = [r["rows"] for r in after["star"]]
        ax.plot(rows, [r["peer_write_s"] for r in after["star"]], ":", color="tab:red",
                label="starfile: write")  # fmt: skip
        ax.plot(rows, [r["peer_read_s"] for r in after["star"]], ":", color="tab:green",
                label="starfile: read")  # fmt: skip
    ax.axhline(10, color="k", lw=0.8, ls=":")
    ax.set(xlabel="particle rows", ylabel="seconds", xscale="log", yscale="log")
    ax.set_title("STAR I/O (target 10 s)", fontsize=10)


def _report_panel(ax: Any, section: dict[str, Any]) -> None:
    runs = section["runs"]
    xs = [r["session"]["movies"] for r in runs]
    ax.plot(xs, [r["report"]["html_bytes"] / 1e6 for r in runs], "-o", label="after: MB")
    if all("baseline" in r for r in runs):
        ax.plot(xs, [r["baseline"]["html_bytes"] / 1e6 for r in runs], "--s", label="before: MB")
    ax.plot(xs, [r["report"]["seconds"] for r in runs], "-^", label="after: seconds")
    ax.axhline(20, color="k", lw=0.8, ls=":")
    ax.set(xlabel="movies", xscale="log", yscale="log")
    ax.set_title("report (page target 20 MB)", fontsize=10)


PANELS = {
    "plan": _plan_panel,
    "particles": _particles_panel,
    "star": _star_panel,
    "report": _report_panel,
}


def plot(data: dict[str, Any], path: Path) -> None:
    """One panel per part measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in PANELS if p in data]
    if not parts:
        return
    fig, axes = plt.subplots(1, len(parts), figsize=(5.4 * len(parts), 4.4), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        PANELS[part](ax, data[part])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=("plan", "particles", "star", "report", "plot"))
    parser.add_argument("--out", type=Path, default=OUT, help="JSON to update (%(default)s)")
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument("--before", help="commit to compare with (plan: its rules; report)")
    parser.add_argument("--before-json", type=Path, help="(star) _scale_star.py's JSON of before")
    parser.add_argument("--before-max", type=int, default=10_000, help="(plan) %(default)s")
    parser.add_argument(
        "--before-s3-max", type=int, default=500, help="(plan, S3) %(default)s movies"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="s per dry run")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "scale")
    args = parser.parse_args(argv)
    data = _load(args.out)
    if args.part == "plan":
        section = measure_plan(
            tuple(args.counts), args.before, args.before_max, args.before_s3_max, args.timeout
        )
        kept = data.get("plan", {})
        if not args.before and "before" in kept.get("seconds", {}):  # keep the old rules' run
            section["seconds"]["before"] = kept["seconds"]["before"]
            section["before_commit"] = kept["before_commit"]
            section["before_machine"] = kept.get("before_machine", kept.get("machine"))
    elif args.part == "particles":
        import _scale_particles

        section = _scale_particles.measure(workdir=args.workdir / "particles")
    elif args.part == "star":
        import _scale_star

        section = {"after": _scale_star.measure(workdir=args.workdir / "star")}
        if args.before_json:  # _scale_star.py run on the code before, kept as it came
            section["before"] = json.loads(args.before_json.read_text())
    elif args.part == "report":
        import _scale_report

        baseline = None
        if args.before:  # the report of COMMIT, on the same sessions (flat layout: it
            # predates the per-chunk folders)
            baseline = args.workdir / "report_before.py"
            baseline.parent.mkdir(parents=True, exist_ok=True)
            old = subprocess.run(
                ["git", "show", f"{args.before}:src/cryosnake/stages/report.py"],
                cwd=ROOT, check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            baseline.write_text(old)
        section = _scale_report.measure(
            workdir=args.workdir / "report", layout="flat" if baseline else "chunk",
            baseline=baseline,
        )  # fmt: skip
    if args.part != "plot":
        data[args.part] = {**section, "machine": _machine()}
        _save(args.out, data)
        print(json.dumps(data[args.part], indent=2))
    plot(data, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
