"""Particle picking on micrographs that cryosnake's simulator did not make.

Two generators, neither sharing code with ``cryosnake.simulate`` or ``cryosnake.ops``:

* ``foreign`` (``tests/foreign_sim.py``): Gaussian pseudo-atom specimens of five shapes
  (rod, ring, dumbbell, globule, tetramer) projected analytically, its own CTF,
  coloured noise, an ice-thickness gradient, dark contamination and carbon film;
* ``aspire`` (``benchmarks/_aspire_micrographs.py``): ASPIRE's ``MicrographSimulation``
  with ASPIRE's own Gaussian-blob volumes (asymmetric, C4, D2, T, O), CTF and noise,
  plus the same kinds of ice gradient and contamination (ASPIRE models neither).

Each seed gives one set of conditions per SNR (0.005, 0.01, 0.02, 0.05, measured as
particle signal variance over noise variance): the specimen, its diameter, the pixel
size, the crowding, the ice gradient, contamination and carbon are drawn from the seed,
so different seeds are different data. The micrographs and a RELION
``micrographs_ctf.star`` (``data_optics`` + ``data_micrographs``) are written to disk
and picked as a user would, with ``cryosnake pick --micrograph M --ctf STAR
--pixel-size P --diameter D`` (blob) and ``--templates`` (template; 12 of the
generator's own noiseless projections), and by ASPIRE's APPLE picker (when ASPIRE is
installed: run under ``.venv-bench``). Beside them, ``bound``: the ideal isotropic
detector of ``_pick_bound.py``, which knows the noise spectrum, the CTF, the particle's
radial profile and, through the truth, its best threshold; no reference-free picker
does better. Scores: precision and recall against the truth
(one-to-one within 0.2 x diameter), F1, the fraction of contamination items with no
pick inside, picks on carbon, seconds per micrograph.

The picker was tuned on micrographs of seeds 1-7 (``simulate_micrograph``); the
benchmark's seeds 101-103 draw micrographs of seeds 101000 and up, never looked at
while tuning. Report them as held out::

    .venv-bench/bin/python benchmarks/bench_pick_foreign.py --seeds 101 102 103 \\
        --out benchmarks/results/pick-foreign-heldout-cpu2.json
    .venv/bin/python benchmarks/bench_pick_foreign.py --generators foreign --skip apple
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pick_bound import bound
from bench_pick import apple_pick, source, versions
from foreign_sim import SHAPES, ForeignMicrograph, simulate_micrograph, write_micrographs

from cryosnake.backend import fft_workers
from cryosnake.io import read_star, write_mrc
from cryosnake.simulate import matched_picks
from cryosnake.stages import pick as pick_stage

GENERATORS = ("foreign", "aspire")
PROGRAMS = ("blob", "template", "apple", "bound")
SNRS = (0.005, 0.01, 0.02, 0.05)
VOLUMES = ("asymmetric", "c4", "d2", "t", "o")


@dataclass(frozen=True)
class Condition:
    """One set of micrographs: generator, SNR and what the seed drew."""

    generator: str
    seed: int
    snr: float
    specimen: str
    diameter: float
    pixel_size: float
    crowding: str
    carbon: bool

    @property
    def label(self) -> str:
        extra = ", carbon" if self.carbon else ""
        return (
            f"{self.generator} seed {self.seed} snr {self.snr:g}: {self.specimen} "
            f"{self.diameter:.0f} Å at {self.pixel_size:g} Å/px, {self.crowding}{extra}"
        )


def conditions(generator: str, seed: int) -> list[Condition]:
    """The seed's draw of specimen, size, pixel size, crowding and carbon, per SNR."""
    rng = np.random.default_rng([seed, GENERATORS.index(generator)])
    names = SHAPES if generator == "foreign" else VOLUMES
    out = []
    for snr in SNRS:
        out.append(
            Condition(
                generator=generator,
                seed=seed,
                snr=snr,
                specimen=str(rng.choice(names)),
                diameter=float(rng.choice([110.0, 140.0, 170.0, 200.0])),
                pixel_size=float(rng.choice([1.0, 1.3, 1.6, 2.0])),
                crowding=str(rng.choice(["sparse", "medium", "crowded"])),
                carbon=bool(rng.random() < 0.3),
            )
        )
    return out


def make(c: Condition, count: int) -> list[ForeignMicrograph]:
    """``count`` micrographs of condition ``c`` (about 1000-1400 px a side)."""
    size = int(round(1400 * 1.3 / c.pixel_size / 2) * 2)
    size = min(max(size, 768), 1600)
    fill = {"sparse": 0.1, "medium": 0.25, "crowded": 0.4}[c.crowding]
    free = size * size
    n = max(4, int(fill * free / (np.pi * (0.5 * c.diameter / c.pixel_size) ** 2)))
    if c.generator == "foreign":
        return [
            simulate_micrograph(
                1000 * c.seed + 10 * SNRS.index(c.snr) + i,
                snr=c.snr,
                shape_name=c.specimen,
                diameter=c.diameter,
                pixel_size=c.pixel_size,
                size=size,
                n_particles=n,
                ice_gradient=0.4,
                carbon=c.carbon,
                contamination=2,
            )
            for i in range(count)
        ]
    from _aspire_micrographs import aspire_micrographs

    return aspire_micrographs(
        1000 * c.seed + 10 * SNRS.index(c.snr),
        count,
        snr=c.snr,
        volume=c.specimen,
        diameter=c.diameter,
        pixel_size=c.pixel_size,
        size=size,
        particles_per_micrograph=n,
        ice_gradient=0.4,
        contamination=2,
        carbon=c.carbon,
    )


def run_pick(argv: list[str]) -> None:
    """``cryosnake pick`` in this process (its one-line summary silenced)."""
    with contextlib.redirect_stdout(io.StringIO()):
        status = pick_stage.main(argv)
    if status != 0:
        raise RuntimeError(f"cryosnake pick failed ({status}): {' '.join(argv)}")


def pick_all(
    program: str, micrographs: list[ForeignMicrograph], folder: Path, star: Path
) -> tuple[list[np.ndarray], list[float]]:
    """Picks (x, y) and seconds per micrograph of one program (the first call is an
    untimed warm-up: imports, FFT plans, the automatic threshold's noise simulation)."""
    m0 = micrographs[0]
    templates = folder / "templates.mrcs"
    if program == "template" and not templates.exists():
        write_mrc(templates, m0.templates, m0.pixel_size)
    picks, seconds = [], []
    for i in [0, *range(len(micrographs))]:
        mrc = folder / f"mic_{i:03d}.mrc"
        out = folder / f"{program}_{i:03d}.star"
        t0 = time.perf_counter()
        if program == "apple":  # ASPIRE refuses a header pixel size it was not given
            bare = folder / f"apple_{i:03d}.mrc"
            if not bare.exists():
                with mrcfile.new(bare) as out_mrc:
                    out_mrc.set_data(micrographs[i].image)
            xy = apple_pick(bare, int(round(m0.diameter / m0.pixel_size)))
        else:
            argv = ["--micrograph", str(mrc), "--ctf", str(star), "--out", str(out)]
            argv += ["--pixel-size", f"{m0.pixel_size}", "--diameter", f"{m0.diameter}"]
            if program == "template":
                argv += ["--templates", str(templates)]
            run_pick(argv)
            table = read_star(out)["particles"]
            xy = table[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(dtype=float).reshape(-1, 2)
        seconds.append(time.perf_counter() - t0)
        picks.append(xy)
    return picks[1:], seconds[1:]


def score(picks: list[np.ndarray], micrographs: list[ForeignMicrograph]) -> dict[str, Any]:
    """Precision, recall, F1, contamination items free of picks, picks on carbon."""
    found = picked = total = items = free = on_carbon = 0
    for xy, m in zip(picks, micrographs, strict=True):
        radius = 0.2 * m.diameter / m.pixel_size
        found += matched_picks(xy, m.coordinates, radius)
        picked, total = picked + len(xy), total + len(m.coordinates)
        for x, y, r in m.junk:
            items += 1
            free += int(not (len(xy) and np.any(np.hypot(xy[:, 0] - x, xy[:, 1] - y) < r)))
        if len(xy) and m.carbon.any():
            rows = np.clip(np.round(xy[:, 1]).astype(int), 0, m.carbon.shape[0] - 1)
            cols = np.clip(np.round(xy[:, 0]).astype(int), 0, m.carbon.shape[1] - 1)
            on_carbon += int(m.carbon[rows, cols].sum())
    precision = found / max(picked, 1)
    recall = found / max(total, 1)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "junk_free": free / items if items else 1.0,
        "junk_items": items,
        "picks": picked,
        "particles": total,
        "picks_on_carbon": on_carbon,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[101, 102, 103])
    parser.add_argument("--count", type=int, default=3, help="micrographs per condition (3)")
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    parser.add_argument("--snr", type=float, nargs="*", help="only these SNRs")
    parser.add_argument("--skip", nargs="*", default=[], choices=PROGRAMS, help="programs")
    parser.add_argument("--out", help="JSON report to write")
    args = parser.parse_args()
    generators = list(args.generators)
    if "aspire" in generators:
        try:
            import aspire  # noqa: F401
        except ImportError:
            print("ASPIRE is not installed: the aspire generator and APPLE are skipped")
            generators.remove("aspire")
            args.skip = [*args.skip, "apple"]
    programs = [p for p in PROGRAMS if p not in args.skip]
    if "apple" in programs:
        logging.disable(logging.WARNING)  # ASPIRE logs every step
    rows: list[dict[str, Any]] = []
    header = f"{'condition':<66} {'program':<9} {'P':>5} {'R':>5} {'F1':>5} junk-free  s/mic"
    print(header)
    for generator in generators:
        for seed in args.seeds:
            for c in conditions(generator, seed):
                if args.snr and c.snr not in args.snr:
                    continue
                micrographs = make(c, args.count)
                with tempfile.TemporaryDirectory(prefix="pick-foreign-") as tmp:
                    folder = Path(tmp)
                    star = write_micrographs(micrographs, folder)
                    for program in programs:
                        if program == "bound":
                            t0 = time.perf_counter()
                            s: dict[str, Any] = bound(micrographs)
                            seconds = [(time.perf_counter() - t0) / len(micrographs)]
                            s.update(junk_free=1.0, junk_items=0, picks_on_carbon=0)
                        else:
                            picks, seconds = pick_all(program, micrographs, folder, star)
                            s = score(picks, micrographs)
                        s["seconds_per_micrograph"] = float(np.mean(seconds))
                        s["snr_measured"] = float(np.mean([m.snr for m in micrographs]))
                        rows.append({"condition": c.__dict__, "program": program, **s})
                        print(
                            f"{c.label:<66} {program:<9} {s['precision']:5.2f} {s['recall']:5.2f}"
                            f" {s['f1']:5.2f} {s['junk_free']:6.0%} ({s['junk_items']})"
                            f" {s['seconds_per_micrograph']:6.2f}",
                            flush=True,
                        )
    summary = summarise(rows)
    if args.out:
        report = {
            "benchmark": "picking on foreign generators (foreign_sim, ASPIRE), blob/template/APPLE",
            "machine": {"cpus": os.cpu_count(), "fft_workers": fft_workers(), "device": "cpu"},
            "versions": versions(),
            "cryosnake_source": source(),
            "seeds": args.seeds,
            "micrographs_per_condition": args.count,
            "summary": summary,
            "rows": rows,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pooled P / R / F1 / junk-free per generator, SNR and program (printed)."""
    out = []

    def key(r: dict[str, Any]) -> tuple[str, float, str]:
        return r["condition"]["generator"], r["condition"]["snr"], r["program"]

    keys = sorted({key(r) for r in rows})
    print(f"\n{'generator':<9} {'snr':>6} {'program':<9} {'P':>5} {'R':>5} {'F1':>5} junk-free")
    for generator, snr, program in keys:
        sel = [r for r in rows if key(r) == (generator, snr, program)]
        picks = sum(r["picks"] for r in sel)
        found = sum(r["precision"] * r["picks"] for r in sel)
        total = sum(r["particles"] for r in sel)
        items = sum(r["junk_items"] for r in sel)
        free = sum(r["junk_free"] * r["junk_items"] for r in sel)
        p, rc = found / max(picks, 1), found / max(total, 1)
        f1 = 2 * p * rc / max(p + rc, 1e-12)
        jf = free / items if items else 1.0
        out.append(
            {"generator": generator, "snr": snr, "program": program, "precision": p,
             "recall": rc, "f1": f1, "junk_free": jf, "junk_items": items}
        )  # fmt: skip
        print(f"{generator:<9} {snr:6.3f} {program:<9} {p:5.2f} {rc:5.2f} {f1:5.2f} {jf:6.0%}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
