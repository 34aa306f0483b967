"""Shared fixtures: small simulated datasets (made once per session) and CLI helpers.

The datasets are made with the simulator, whose ground truth the tests compare against:

- ``tiny_dataset``: ``cryosnake simulate --preset tiny --seed 1`` through the CLI, every
  effect on (junk, solvent, ice, local motion, noise, gain, hot pixels).
- ``clean_dataset``: the tiny preset with junk, solvent noise, ice-thickness variation
  and local motion off, so that the noiseless images contain the particles only.

``replay_movie`` regenerates movie ``i`` of a dataset in memory (truth and frames, with
or without noise) from its ``simulation.yaml``, with the seeding of
:func:`cryosnake.simulate.simulate_dataset`; a test checks that the replay reproduces
the movie files bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import gemmi
import numpy as np
import pytest
import yaml

from cryosnake import cli
from cryosnake.simulate import (
    MovieTruth,
    SimulationParams,
    Specimen,
    load_specimen,
    make_detector,
    make_params,
    simulate_dataset,
    simulate_movie,
)

CLEAN_OVERRIDES = {
    "junk": False,
    "solvent_noise": 0.0,
    "ice_thickness_variation": 0.0,
    "local_motion": 0.0,
}


def dataset_params(dataset: Path) -> SimulationParams:
    """The parameters a dataset was simulated with (from its simulation.yaml)."""
    record = yaml.safe_load((dataset / "simulation.yaml").read_text())
    return SimulationParams(**record["parameters"])


_SPECIMENS: dict[tuple[str, float, int, float], Specimen] = {}


def specimen_of(params: SimulationParams) -> Specimen:
    """The specimen of ``params`` (cached: building the phantom takes about a second)."""
    key = (
        params.specimen, params.particle_diameter, params.phantom_seed, params.pixel_size,
        params.partial_fraction > 0, params.partial_domain,
    )  # fmt: skip
    if key not in _SPECIMENS:
        _SPECIMENS[key] = load_specimen(params)[0]
    return _SPECIMENS[key]


def replay(
    dataset: Path, index: int, *, noise: bool = False
) -> tuple[SimulationParams, MovieTruth, Iterator[np.ndarray]]:
    """Re-simulate movie ``index`` of ``dataset`` in memory (same seeds as on disk)."""
    params = dataset_params(dataset)
    seeds = np.random.SeedSequence(params.seed).spawn(params.n_movies + 1)
    specimen = specimen_of(params)
    detector = make_detector(params, np.random.default_rng(seeds[0]))
    truth, frames = simulate_movie(
        params, index, specimen, detector, np.random.default_rng(seeds[index + 1]), noise=noise
    )
    return params, truth, frames


def write_small_pdb(path: Path) -> dict[str, np.ndarray]:
    """A 12-residue chain (48 heavy atoms, plus hydrogens and a water that must be dropped)."""
    st = gemmi.Structure()
    st.name = "tiny"
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    rng = np.random.default_rng(0)
    heavy = []
    for i in range(12):
        res = gemmi.Residue()
        res.name = "ALA"
        res.seqid = gemmi.SeqId(i + 1, " ")
        for j, (name, el) in enumerate([("N", "N"), ("CA", "C"), ("C", "C"), ("O", "O")]):
            atom = gemmi.Atom()
            atom.name = name
            atom.element = gemmi.Element(el)
            pos = (
                3.8 * i * np.cos(0.5 * i) + rng.normal(),
                3.8 * i * np.sin(0.5 * i) + rng.normal(),
                1.5 * j + i,
            )
            atom.pos = gemmi.Position(*pos)
            atom.b_iso = 20.0 + i
            atom.occ = 1.0
            res.add_atom(atom)
            heavy.append((pos, gemmi.Element(el).atomic_number, 20.0 + i))
        h = gemmi.Atom()
        h.name = "H"
        h.element = gemmi.Element("H")
        h.pos = gemmi.Position(0, 0, 0)
        res.add_atom(h)
        chain.add_residue(res)
    water = gemmi.Residue()
    water.name = "HOH"
    water.seqid = gemmi.SeqId(100, " ")
    water.het_flag = "H"
    o = gemmi.Atom()
    o.name = "O"
    o.element = gemmi.Element("O")
    o.pos = gemmi.Position(80, 80, 80)
    water.add_atom(o)
    chain.add_residue(water)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    st.write_pdb(str(path))
    xyz = np.array([h[0] for h in heavy])
    z = np.array([h[1] for h in heavy], dtype=float)
    b = np.array([h[2] for h in heavy])
    return {"xyz": xyz, "z": z, "b": b}


@pytest.fixture
def small_pdb(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A small PDB file written with gemmi, and its heavy atoms (xyz, z, b)."""
    path = tmp_path / "model.pdb"
    return path, write_small_pdb(path)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cryosnake simulate --preset tiny --seed 1`` (2 movies, 8 x 256 x 256 px)."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    code = cli.main(["simulate", "--preset", "tiny", "--seed", "1", "--out-dir", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="session")
def clean_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny preset without junk, solvent, ice variation or local motion."""
    out = tmp_path_factory.mktemp("clean") / "data"
    simulate_dataset(make_params("tiny", seed=1, **CLEAN_OVERRIDES), out, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def replay_movie() -> Callable[..., tuple[SimulationParams, MovieTruth, Iterator[np.ndarray]]]:
    return replay


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], tuple[int, str, str]]:
    """Run ``cryosnake ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def run(args: Sequence[str]) -> tuple[int, str, str]:
        capsys.readouterr()  # drop anything printed before
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors, --help
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
