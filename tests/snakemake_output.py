"""Reading snakemake's console output in tests (shared by tests/workflow and tests/aws,
and benchmarks/bench_live.py)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path


def job_counts(output: str) -> dict[str, int]:
    """The last 'Job stats' table of snakemake's output as {rule: count}."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def finished_jobs(logs: Iterable[Path]) -> Counter[tuple[str, str]]:
    """(rule, chunk) of every job that finished, counted over snakemake's ``logs``
    (chunk "" for a rule without the chunk wildcard)."""
    done: Counter[tuple[str, str]] = Counter()
    for log in logs:
        jobs: dict[str, list[str]] = {}  # jobid -> [rule, chunk]
        rule = ""
        for line in log.read_text().splitlines():
            if m := re.match(r"^(?:local)?rule (\w+):", line):
                rule = m[1]
            elif m := re.match(r"^\s+jobid: (\d+)", line):
                jobs[m[1]] = [rule, ""]
            elif (m := re.match(r"^\s+wildcards: chunk=(chunk\d+)", line)) and jobs:
                jobs[list(jobs)[-1]][1] = m[1]
            elif m := re.match(r"^Finished jobid: (\d+)", line):
                rule_chunk = jobs.get(m[1], ["?", ""])
                done[(rule_chunk[0], rule_chunk[1])] += 1
    return done
