"""3D classification against the truth of a two-state specimen (issue 20's acceptance).

One run, on one device, of three measurements on particles whose state is known:

1. **Two states**: ``--particles`` particles, half of them the whole specimen and half
   the specimen without one domain (``removed_mass`` of it), classified into K = 2
   from the whole specimen's map low-passed to 30 Å (both classes start from it). Reported:
   the share of particles whose class is their true state (each class stands for the
   state most of its particles have), and each class map's FSC against its true state at
   0.5 (Å, within the refinement mask) next to that of **a refinement of that state's
   particles alone** (refine3d's gold standard, from the same start; the "full" map), and
   their ratio (acceptance: <= 1.15); and, as FSC 0.5 reaches Nyquist for both at
   coarse samplings, the mean FSC against the truth over the shells finer than 10 Å of
   each (``--save-maps`` keeps the maps).
2. **A pure set**: the first ``--pure-particles`` particles of the whole state into
   K = 3; reported: the FSC at 0.5 between every two class maps (acceptance: better than
   15 Å) and the class shares. How well the maps can agree depends on the particles per
   class (a third of the set each), so the figure goes with the set's size; as a
   control, the same FSC between the maps of random thirds of the set at the same
   poses (what the noise alone allows).

``--parts two`` or ``--parts pure`` runs one of them.
3. Seconds per iteration and in all.

Generators (``--generator``):

- ``cryosnake``: ``tests/particles_sim.py`` with the specimens of
  :func:`cryosnake.simulate.phantom_states` (the phantom, and the phantom without its
  domain 2: 13 % of its atoms), SNR 0.05 at 1.5 Å/px (the convention of the refine3d
  benchmark), random orientations, picking errors, CTF per micrograph of 40, coloured
  noise;
- ``aspire``: ``benchmarks/_aspire_states.py``, ASPIRE's ``Simulation`` of two
  Gaussian-blob volumes (one without a domain), its CTF filters and white noise, at the
  per-pixel SNR of the stack that the cryosnake generator gives (run under
  ``.venv-bench``).

Run::

    .venv/bin/python benchmarks/bench_class3d.py --out benchmarks/results/class3d-cpu2.json
    .venv-bench/bin/python benchmarks/bench_class3d.py --generator aspire \\
        --out benchmarks/results/class3d-aspire-cpu2.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryosnake.backend import array_module, resolve_device
from cryosnake.ops import class3d as c3
from cryosnake.ops import refine3d as r3
from cryosnake.ops.fsc import fsc, shell_resolution

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

INITIAL_LOWPASS = 30.0


def _cryosnake_data(args: argparse.Namespace) -> dict[str, Any]:
    from particles_sim import AMPLITUDE_CONTRAST, CS, VOLTAGE, simulate_particles

    from cryosnake.simulate import phantom_states

    whole, partial = phantom_states(args.diameter)
    stack = simulate_particles(
        args.particles, box=args.box, pixel_size=args.pixel_size, junk_fraction=0.0,
        snr=args.snr, seed=args.seed, specimens=(whole, partial), diameter=args.diameter,
    )  # fmt: skip
    n = args.particles
    ctf = np.column_stack(
        [stack.defocus, np.zeros(n)] + [np.full(n, v) for v in (VOLTAGE, CS, AMPLITUDE_CONTRAST)]
    )
    assert stack.states is not None
    return {
        "images": stack.images,
        "ctf": ctf,
        "states": stack.states,
        "volumes": np.stack([stack.volume(state=0), stack.volume(state=1)]),
        "pixel_size": stack.pixel_size,
        "snr_stack": stack.snr_stack,
        "removed_mass": 1.0 - len(partial.coords) / len(whole.coords),
        "diameter": args.diameter,
        "description": f"tests/particles_sim.py, phantom_states({args.diameter:g}) "
        "(domain 2 absent)",
    }


def _aspire_data(args: argparse.Namespace) -> dict[str, Any]:
    from _aspire_states import aspire_two_states

    data = aspire_two_states(
        args.particles, box=args.box, pixel_size=args.pixel_size, snr_stack=args.snr_stack,
        seed=args.seed,
    )  # fmt: skip
    data.setdefault("diameter", 150.0)
    return data


def _truth_resolution(volume: np.ndarray, truth: np.ndarray, mask: np.ndarray, px: float) -> float:
    return float(shell_resolution(fsc(volume * mask, truth * mask), px, 0.5))


def _truth_fsc_beyond(
    volume: np.ndarray, truth: np.ndarray, mask: np.ndarray, px: float, limit: float = 10.0
) -> float:
    """Mean FSC against the truth over the shells finer than ``limit`` Å: a measure
    that still tells two maps apart when both reach FSC 0.5 at Nyquist."""
    curve = fsc(volume * mask, truth * mask)
    box = volume.shape[0]
    shells = np.arange(len(curve))
    return float(curve[shells > box * px / limit].mean())


def _classify(
    spectra: np.ndarray,
    ctf: np.ndarray,
    px: float,
    reference: np.ndarray,
    settings: c3.ClassSettings,
    xp: Any,
    label: str,
) -> tuple[c3.ClassState, list[dict[str, Any]]]:
    n = len(spectra)
    halves = np.random.default_rng(settings.seed).permutation(n) % 2
    state = c3.initial_class_state(spectra, [reference], px, INITIAL_LOWPASS, settings, halves)
    log = []
    while not state.converged and state.iteration < settings.search.max_iterations:
        tick = time.perf_counter()
        state, _ = c3.class_iteration(spectra, ctf, px, state, settings, xp)
        seconds = time.perf_counter() - tick
        log.append(
            {
                "iteration": state.iteration,
                "seconds": seconds,
                "step": state.step,
                "fractions": state.fractions.tolist(),
                "resolutions": state.resolutions.tolist(),
                "changed": state.changes[-1],
            }
        )
        print(
            f"{label}: iteration {state.iteration} {seconds:.0f} s step {state.step:.2f} "
            f"shares {np.round(state.fractions, 3).tolist()} resolutions "
            f"{np.round(state.resolutions, 2).tolist()} changed {state.changes[-1]:.3f}",
            flush=True,
        )
    return state, log


def _refine(
    spectra: np.ndarray,
    ctf: np.ndarray,
    px: float,
    reference: np.ndarray,
    settings: r3.RefineSettings,
    xp: Any,
    seed: int,
) -> tuple[np.ndarray, int, float]:
    n = len(spectra)
    halves = np.random.default_rng(seed).permutation(n) % 2
    state = r3.initial_refine_state(spectra, reference, px, INITIAL_LOWPASS, settings, halves)
    rec: dict[str, Any] = {}
    while not state.converged and state.iteration < settings.max_iterations:
        state, rec = r3.refine_iteration(spectra, ctf, px, state, settings, xp)
    return np.asarray(rec["full"]), state.iteration, state.resolution


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = resolve_device(args.device)
    xp = array_module(device)
    tick = time.perf_counter()
    data = _aspire_data(args) if args.generator == "aspire" else _cryosnake_data(args)
    px = float(data["pixel_size"])
    box = int(data["images"].shape[-1])
    states = np.asarray(data["states"])
    print(
        f"{args.generator}: {len(states)} particles of {box} px at {px} Å "
        f"({np.bincount(states).tolist()} per state), SNR per pixel of the stack "
        f"{data['snr_stack']:.3f}, removed mass {data['removed_mass']:.3f}; "
        f"{time.perf_counter() - tick:.0f} s",
        flush=True,
    )
    spectra = r3.particle_spectra(data["images"])
    ctf = np.asarray(data["ctf"])
    truths = np.asarray(data["volumes"])
    diameter = float(data["diameter"])
    search = r3.RefineSettings(
        mask_diameter=1.1 * diameter / px, max_shift=0.1 * diameter / px,
        max_iterations=args.iterations, tau2_fudge=4.0,
    )  # fmt: skip
    out: dict[str, Any] = {
        "generator": args.generator,
        "description": data["description"],
        "particles": len(states),
        "per_state": np.bincount(states).tolist(),
        "box": box,
        "pixel_size": px,
        "snr_stack": float(data["snr_stack"]),
        "removed_mass": float(data["removed_mass"]),
        "seed": args.seed,
        "device": device,
    }

    if "two" in args.parts:
        out["two_states"] = _two_states(args, spectra, ctf, px, truths, states, search, xp)
    if "pure" in args.parts:
        out["pure"] = _pure(args, spectra, ctf, px, truths, states, search, xp)
    return out


def _two_states(
    args: argparse.Namespace,
    spectra: np.ndarray,
    ctf: np.ndarray,
    px: float,
    truths: np.ndarray,
    states: np.ndarray,
    search: r3.RefineSettings,
    xp: Any,
) -> dict[str, Any]:
    mask = r3.soft_sphere(spectra.shape[1], search.mask_diameter)
    tick = time.perf_counter()
    settings = c3.ClassSettings(classes=2, search=search, seed=args.seed)
    state, log = _classify(spectra, ctf, px, truths[0], settings, xp, "K=2")
    seconds = time.perf_counter() - tick
    classes = state.classes
    # Each class stands for the state most of its particles have.
    label = np.array([np.bincount(states[classes == c], minlength=2).argmax() for c in range(2)])
    accuracy = float(np.mean(label[classes] == states))
    per_class = []
    refine = r3.RefineSettings(
        mask_diameter=search.mask_diameter, max_shift=search.max_shift,
        max_iterations=args.iterations,
    )  # fmt: skip
    for c in range(2):
        s = int(label[c])
        ours = _truth_resolution(state.references[c], truths[s], mask, px)
        ours_beyond = _truth_fsc_beyond(state.references[c], truths[s], mask, px)
        sel = np.flatnonzero(states == s)
        tock = time.perf_counter()
        full, iterations, gold = _refine(
            spectra[sel], ctf[sel], px, truths[0], refine, xp, args.seed
        )
        alone = _truth_resolution(full, truths[s], mask, px)
        if args.save_maps:
            folder = Path(args.save_maps)
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"class{c + 1}.npy", state.references[c])
            np.save(folder / f"state{s}_alone.npy", full)
        per_class.append(
            {
                "class": c + 1,
                "state": s,
                "share": float(state.fractions[c]),
                "particles": int((classes == c).sum()),
                "purity": float(np.mean(states[classes == c] == s)) if (classes == c).any() else 0,
                "fsc_0.5_vs_truth_angstrom": ours,
                "class_resolution_angstrom": float(state.resolutions[c]),
                "refined_alone_fsc_0.5_vs_truth_angstrom": alone,
                "refined_alone_iterations": iterations,
                "refined_alone_gold_standard_angstrom": float(gold),
                "refined_alone_seconds": time.perf_counter() - tock,
                "ratio": ours / alone,
                "mean_truth_fsc_beyond_10A": ours_beyond,
                "refined_alone_mean_truth_fsc_beyond_10A": _truth_fsc_beyond(
                    full, truths[s], mask, px
                ),
            }
        )
        print(f"class {c + 1} (state {s}): {per_class[-1]}", flush=True)
    return {
        "accuracy": accuracy,
        "iterations": state.iteration,
        "converged": state.converged,
        "seconds": seconds,
        "mean_max_posterior": float(state.posteriors.max(axis=1).mean()),
        "classes": per_class,
        "log": log,
    }


def _pure(
    args: argparse.Namespace,
    spectra: np.ndarray,
    ctf: np.ndarray,
    px: float,
    truths: np.ndarray,
    states: np.ndarray,
    search: r3.RefineSettings,
    xp: Any,
) -> dict[str, Any]:
    mask = r3.soft_sphere(spectra.shape[1], search.mask_diameter)
    pure = np.flatnonzero(states == 0)[: args.pure_particles]
    spectra, ctf = spectra[pure], ctf[pure]
    tick = time.perf_counter()
    settings = c3.ClassSettings(classes=3, search=search, seed=args.seed + 1)
    state, log = _classify(spectra, ctf, px, truths[0], settings, xp, "pure K=3")
    pairs = {
        f"{a + 1}-{b + 1}": float(
            shell_resolution(fsc(state.references[a], state.references[b]), px, 0.5)
        )
        for a, b in itertools.combinations(range(3), 2)
    }
    # Control: the same particles at the same poses (each at its class's), cut into
    # random thirds of the classes' sizes; their maps agree only as well as the
    # noise of a third of the set allows, so the classes can be judged against them.
    n = len(pure)
    best = state.classes
    third = np.random.default_rng(args.seed + 2).permutation(
        np.repeat(np.arange(3), n // 3 + 1)[:n]
    )
    controls = []
    for c in range(3):
        sel = np.flatnonzero(third == c)
        rec = r3.reconstruct_halves(
            spectra[sel], ctf[sel], state.matrices[best[sel], sel],
            state.shifts[best[sel], sel], state.halves[sel], state.sigma2, px,
            search.mask_diameter, tau2_fudge=search.tau2_fudge, xp=xp,
        )  # fmt: skip
        controls.append(rec["full"] * mask)
    control_pairs = {
        f"{a + 1}-{b + 1}": float(shell_resolution(fsc(controls[a], controls[b]), px, 0.5))
        for a, b in itertools.combinations(range(3), 2)
    }
    result = {
        "particles": len(pure),
        "iterations": state.iteration,
        "seconds": time.perf_counter() - tick,
        "shares": state.fractions.tolist(),
        "pairwise_fsc_0.5_angstrom": pairs,
        "control_random_thirds_pairwise_fsc_0.5_angstrom": control_pairs,
        "vs_truth_fsc_0.5_angstrom": [
            _truth_resolution(state.references[c], truths[0], mask, px) for c in range(3)
        ],
        "log": log,
    }
    print(f"pure: {pairs}; random thirds at the same poses: {control_pairs}", flush=True)
    return result


def main() -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--generator", choices=["cryosnake", "aspire"], default="cryosnake")
    parser.add_argument("--particles", type=int, default=20000, help="(20000)")
    parser.add_argument("--pure-particles", type=int, default=4000, help="(4000)")
    parser.add_argument("--box", type=int, default=64, help="px (64)")
    parser.add_argument("--pixel-size", type=float, default=3.0, help="Å/px (3.0)")
    parser.add_argument("--snr", type=float, default=0.05, help="at 1.5 Å/px (0.05; cryosnake)")
    parser.add_argument(
        "--diameter", type=float, default=150.0, help="Å, of the phantom (150; cryosnake)"
    )
    parser.add_argument(
        "--snr-stack", type=float, default=0.2, help="per pixel of the stack (aspire; 0.2)"
    )
    parser.add_argument("--iterations", type=int, default=15, help="at most (15)")
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=["two", "pure"],
        default=["two", "pure"],
        help="measurements to run (both)",
    )
    parser.add_argument("--save-maps", default=None, help="folder: keep the maps (.npy)")
    parser.add_argument("--out", default=None, help="JSON report to write")
    args = parser.parse_args()
    result = {
        "benchmark": "3D classification of a two-state specimen against its truth",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.machine(),
        },
        **run(args),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
