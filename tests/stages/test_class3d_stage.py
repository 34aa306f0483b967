"""cryosnake class3d against the simulator's truth: a two-state specimen.

Particles: 1000 projections (48 px at 4.5 Å/px) of the phantom and of the phantom
without its domain 1 (25 % of its atoms; :func:`cryosnake.simulate.phantom_states`), half
each,
with CTF, picking errors and noise at SNR 0.05 (per pixel at 1.5 Å/px;
:mod:`particles_sim`). Reference: the whole state's truth, low-passed to 30 Å. Checked:
the share of particles in their true state's class, RELION's outputs, the kept class,
resume, K classes from K maps, and the one-line errors. The acceptance figures at
20,000 particles are measured by ``benchmarks/bench_class3d.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from particles_sim import ParticleStack, simulate_particles, write_particles

from cryosnake.backend import gpu_available
from cryosnake.io import read_mrc, read_star, write_mrc
from cryosnake.simulate import phantom_states
from cryosnake.stages import _images
from cryosnake.stages.class3d import keep_classes

RunCli = Callable[[Sequence[object]], tuple[int, str, str]]
PX = 4.5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], ParticleStack]:
    folder = tmp_path_factory.mktemp("class3d")
    whole, partial = phantom_states(150.0, domain=1)
    stack = simulate_particles(
        1000, junk_fraction=0.0, snr=0.05, seed=41, specimens=(whole, partial)
    )
    star = write_particles(stack, folder)
    references = []
    for state in (0, 1):
        path = folder / f"truth{state}.mrc"
        write_mrc(path, stack.volume(state=state), PX, kind="volume")
        references.append(path)
    return star, references, stack


def _args(
    star: Path, references: list[Path], out: Path, classes: int, iterations: int
) -> list[str]:
    args = ["class3d", "--particles", str(star), "--out-dir", str(out), "--diameter", "165"]
    for ref in references:
        args += ["--reference", str(ref)]
    return [*args, "--classes", str(classes), "--iterations", str(iterations)]


def _accuracy(classes: np.ndarray, states: np.ndarray) -> float:
    """Share of particles in the class that stands for their state (the majority's)."""
    label = {c: np.bincount(states[classes == c], minlength=2).argmax() for c in np.unique(classes)}
    return float(np.mean([label[c] == s for c, s in zip(classes, states, strict=True)]))


@pytest.fixture(scope="module")
def run(dataset: tuple[Path, list[Path], ParticleStack]) -> Path:
    from cryosnake import cli

    star, references, _ = dataset
    out = star.parent / "c3d"
    assert cli.main(_args(star, references[:1], out, 2, 2)) == 0
    # A second run with more iterations resumes after the first's last one.
    assert cli.main(_args(star, references[:1], out, 2, 7)) == 0
    return out


def test_two_states_are_sorted(run: Path, dataset: tuple[Path, list[Path], ParticleStack]) -> None:
    _, _, stack = dataset
    assert stack.states is not None
    data = read_star(run / "run_data.star")["particles"]
    classes = data["rlnClassNumber"].to_numpy()
    assert set(classes) == {1, 2}
    assert _accuracy(classes, stack.states) >= 0.9
    p = data["rlnMaxValueProbDistribution"].to_numpy()
    assert np.all((p >= 0.5) & (p <= 1.0))
    for label in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"):
        assert label in data.columns


def test_relion_outputs_and_kept_class(run: Path) -> None:
    model = read_star(run / "run_model.star")
    general, classes = model["model_general"], model["model_classes"]
    assert int(general["rlnNrClasses"].iloc[0]) == 2
    last = int(general["rlnCurrentIteration"].iloc[0])
    assert 3 <= last <= 7
    assert classes["rlnClassDistribution"].sum() == pytest.approx(1.0, abs=1e-6)
    assert list(classes["rlnReferenceImage"]) == ["run_class001.mrc", "run_class002.mrc"]
    for i in range(1, last + 1):  # every iteration's files, RELION's names
        for suffix in ("class001.mrc", "class002.mrc", "model.star", "data.star"):
            assert (run / f"run_it{i:03d}_{suffix}").is_file()
    volume, voxel = read_mrc(run / "run_class001.mrc")
    assert volume.shape == (48, 48, 48) and voxel == pytest.approx(PX)
    kept = read_star(run / "particles_kept.star")
    best = keep_classes(
        classes["rlnEstimatedResolution"].to_numpy(), classes["rlnClassDistribution"].to_numpy()
    )
    assert set(kept["particles"]["rlnClassNumber"]) == set(best)
    assert "optics" in kept
    assert (run / "run_classes.png").stat().st_size > 10_000


def test_resume_says_so(
    dataset: tuple[Path, list[Path], ParticleStack], run_cli: RunCli, tmp_path: Path
) -> None:
    star, references, _ = dataset
    out = tmp_path / "c3d"
    code, stdout, _ = run_cli(_args(star, references[:1], out, 2, 1))
    assert code == 0
    code, stdout, _ = run_cli(_args(star, references[:1], out, 2, 2))
    assert code == 0
    assert "resuming from" in stdout and "after iteration 1" in stdout
    assert (out / "run_it002_model.star").is_file()


def test_classes_from_one_map_per_class(
    dataset: tuple[Path, list[Path], ParticleStack], run_cli: RunCli, tmp_path: Path
) -> None:
    star, references, stack = dataset
    assert stack.states is not None
    out = tmp_path / "c3d"
    code, _, err = run_cli([*_args(star, references, out, 2, 3), "--keep", "2"])
    assert code == 0, err
    data = read_star(out / "run_data.star")["particles"]
    # Class k started from state k - 1's map, and stays it.
    assert np.mean(data["rlnClassNumber"].to_numpy() - 1 == stack.states) >= 0.9
    kept = read_star(out / "particles_kept.star")["particles"]
    assert set(kept["rlnClassNumber"]) == {2}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--classes", "3"], "2 references for 3 classes"),
        (["--classes", "2", "--keep", "3"], "--keep 3 is beyond the 2 classes"),
    ],
)
def test_bad_options_give_one_line(
    dataset: tuple[Path, list[Path], ParticleStack],
    run_cli: RunCli,
    tmp_path: Path,
    extra: list[str],
    message: str,
) -> None:
    star, references, _ = dataset
    args = ["class3d", "--particles", str(star), "--out-dir", str(tmp_path)]
    for ref in references:
        args += ["--reference", str(ref)]
    code, _, err = run_cli([*args, *extra])
    assert code != 0
    assert message in err and len(err.strip().splitlines()) == 1


def test_keep_picks_the_best_resolved_class() -> None:
    assert keep_classes(np.array([8.0, 6.5, np.inf]), np.array([0.4, 0.6, 0.0])) == [2]
    assert keep_classes(np.array([7.0, 7.0]), np.array([0.3, 0.7])) == [2]  # tie: the larger


def test_streamed_particles_give_the_in_memory_result(
    dataset: tuple[Path, list[Path], ParticleStack],
    tmp_path: Path,
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Memory bounded as in refine3d: streamed from the stacks, the same numbers."""
    star, references, _ = dataset
    for name, share in (("memory", 0.5), ("streamed", 0.0)):  # 0: stream whatever the size
        monkeypatch.setattr(_images, "IN_MEMORY_SHARE", share)
        code, out, err = run_cli(_args(star, references, tmp_path / name, 2, 1))
        assert code == 0, err
        assert ("particles in memory" if share else "particles streamed from") in out, out
    for map_name in ("run_class001.mrc", "run_class002.mrc"):
        a, _ = read_mrc(tmp_path / "memory" / map_name)
        b, _ = read_mrc(tmp_path / "streamed" / map_name)
        np.testing.assert_array_equal(a, b)
    a_data = read_star(tmp_path / "memory" / "run_data.star")["particles"]
    b_data = read_star(tmp_path / "streamed" / "run_data.star")["particles"]
    assert a_data.equals(b_data)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_gpu_run_matches_the_cpu_run(
    run: Path, dataset: tuple[Path, list[Path], ParticleStack], tmp_path: Path
) -> None:
    from cryosnake import cli

    star, references, stack = dataset
    assert stack.states is not None
    out = tmp_path / "gpu"
    assert cli.main([*_args(star, references[:1], out, 2, 7), "--device", "gpu"]) == 0
    cpu = read_star(run / "run_data.star")["particles"]["rlnClassNumber"].to_numpy()
    gpu = read_star(out / "run_data.star")["particles"]["rlnClassNumber"].to_numpy()
    # The same sorting (class numbers may be swapped: the classes start alike).
    assert _accuracy(gpu, stack.states) >= 0.9
    assert max(np.mean(gpu == cpu), np.mean(gpu != cpu)) >= 0.97
    shares = [read_star(f / "run_model.star")["model_classes"] for f in (run, out)]
    assert sorted(shares[0]["rlnClassDistribution"]) == pytest.approx(
        sorted(shares[1]["rlnClassDistribution"]), abs=0.03
    )
