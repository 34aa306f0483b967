"""Reading snakemake's console output in tests (shared by tests/workflow and tests/aws)."""

from __future__ import annotations


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
