"""Write a simulated dataset: movies, gain reference and ground truth."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryosnake import __version__
from cryosnake.errors import ConfigError
from cryosnake.io import optics_table, read_mrc, write_movie, write_mrc, write_star, write_yaml
from cryosnake.simulate._atoms import (
    PROTEIN_CONTRAST_V,
    atoms_from_model,
    phantom_atoms,
    phantom_states,
    render_volume,
)
from cryosnake.simulate._engine import MovieTruth, Specimen, make_detector, simulate_movie
from cryosnake.simulate._params import SimulationParams

__all__ = ["DatasetSummary", "load_specimen", "simulate_dataset", "volume_box"]

LOCAL_GRID = 5  # truth of the local deformation is tabulated on a 5 x 5 grid


@dataclass(frozen=True)
class DatasetSummary:
    out_dir: Path
    movies: list[Path]
    n_particles: int
    seconds: float


def volume_box(diameter: float, pixel_size: float) -> int:
    """Box (px) for the truth volume: >= 1.25 x diameter, a multiple of 16."""
    return int(math.ceil(1.25 * diameter / pixel_size / 16.0)) * 16


def load_specimen(params: SimulationParams) -> tuple[Specimen, np.ndarray]:
    """The specimen to image and its volume (V) at the micrograph pixel size.

    With ``params.partial_fraction`` > 0 the specimen also carries its partial state
    (``Specimen.partial``: the phantom without domain ``params.partial_domain``, in the
    frame of the whole one).
    """
    spec = params.specimen
    px = params.pixel_size
    if spec == "phantom" and params.partial_fraction > 0:
        atoms, partial = phantom_states(
            params.particle_diameter, domain=params.partial_domain, seed=params.phantom_seed
        )
        box = volume_box(atoms.diameter, px)
        return Specimen(
            atoms=atoms, volume=None, diameter=atoms.diameter, partial=partial
        ), render_volume(atoms, box, px)
    if spec == "phantom":
        atoms = phantom_atoms(params.particle_diameter, seed=params.phantom_seed)
    elif spec.lower().endswith((".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".cif.gz")):
        atoms = atoms_from_model(spec)
    elif spec.lower().endswith((".mrc", ".map")):
        volume, voxel = read_mrc(spec)
        if volume.ndim != 3 or len(set(volume.shape)) != 1:
            raise ConfigError(
                f"{spec}: the specimen map must be a cubic volume, got {volume.shape}"
            )
        if voxel <= 0:
            raise ConfigError(f"{spec}: the map header has no voxel size")
        volume = _resample_volume(np.asarray(volume, dtype=np.float32), voxel, px)
        volume = _calibrate_map(volume, px, spec)
        extent = _map_diameter(volume) * px
        return Specimen(atoms=None, volume=volume, diameter=extent), volume
    else:
        raise ConfigError(
            f"simulate parameter 'specimen': {spec!r} is not 'phantom' nor a .mrc/.map, "
            ".pdb or .cif file"
        )
    box = volume_box(atoms.diameter, px)
    return Specimen(atoms=atoms, volume=None, diameter=atoms.diameter), render_volume(
        atoms, box, px
    )


def _partial_volume(specimen: Specimen, box: int, pixel_size: float) -> np.ndarray:
    """The volume (V) of the specimen's partial state, rendered like the whole one."""
    if specimen.partial is None:
        raise ValueError("this specimen has no partial state")
    return render_volume(specimen.partial, box, pixel_size)


def _calibrate_map(volume: np.ndarray, pixel_size: float, source: str) -> np.ndarray:
    """Scale a map of arbitrary units to potential (V) with protein-like contrast.

    The molecular volume is estimated from the map low-passed with a 6 Å Gaussian
    (protein then looks like a blob of even density): voxels above half of its
    95th-percentile level inside the particle. The map is scaled so that its integral
    over the particle equals ``PROTEIN_CONTRAST_V`` times that volume. On the
    built-in phantom this gives the molecular volume to within 20 %.
    """
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(volume, 6.0 / pixel_size)
    peak = float(smooth.max())
    if not peak > 0:
        raise ConfigError(f"{source}: the specimen map has no positive density")
    particle = smooth > 0.05 * peak
    level = float(np.percentile(smooth[particle], 95))
    molecular_volume = float((smooth > 0.5 * level).sum()) * pixel_size**3
    integral = float(volume[particle].sum()) * pixel_size**3
    if not integral > 0:
        raise ConfigError(f"{source}: the specimen map has no positive density")
    scale = PROTEIN_CONTRAST_V * molecular_volume / integral
    return (volume * scale).astype(np.float32)


def _map_diameter(volume: np.ndarray) -> float:
    """Twice the largest distance from the box centre of voxels above 5 % of the max."""
    n = volume.shape[0]
    idx = np.argwhere(volume > 0.05 * volume.max()) - n // 2
    return float(2.0 * np.sqrt((idx**2).sum(axis=1)).max()) if len(idx) else float(n)


def _resample_volume(volume: np.ndarray, voxel: float, pixel_size: float) -> np.ndarray:
    """Resample a cubic map to ``pixel_size`` by Fourier cropping or zero padding."""
    n = volume.shape[0]
    m = int(round(n * voxel / pixel_size / 2.0)) * 2
    if m == n:
        return volume
    f = np.fft.fftshift(np.fft.fftn(volume))
    if m < n:
        a = n // 2 - m // 2
        g = f[a : a + m, a : a + m, a : a + m]
    else:
        a = m // 2 - n // 2
        g = np.zeros((m, m, m), dtype=f.dtype)
        g[a : a + n, a : a + n, a : a + n] = f
    out = np.fft.ifftn(np.fft.ifftshift(g)).real * (m**3 / n**3)
    return out.astype(np.float32)


def _ctf_row(params: SimulationParams, truth: MovieTruth) -> dict[str, Any]:
    return {
        "rlnDefocusU": truth.defocus_u,
        "rlnDefocusV": truth.defocus_v,
        "rlnDefocusAngle": truth.defocus_angle,
        "rlnPhaseShift": params.phase_shift,
        "rlnVoltage": params.voltage,
        "rlnSphericalAberration": params.cs,
        "rlnAmplitudeContrast": params.amplitude_contrast,
        "rlnMicrographPixelSize": params.pixel_size,
    }


def _write_motion(path: Path, params: SimulationParams, truth: MovieTruth, movie: str) -> None:
    ny, nx = params.shape
    n = params.n_frames
    general = pd.DataFrame(
        [
            {
                "rlnImageSizeX": nx,
                "rlnImageSizeY": ny,
                "rlnImageSizeZ": n,
                "rlnMicrographMovieName": movie,
                "rlnMicrographBinning": 1.0,
                "rlnMicrographOriginalPixelSize": params.pixel_size,
                "rlnMicrographDoseRate": params.dose_per_frame,
                "rlnMicrographPreExposure": 0.0,
                "rlnVoltage": params.voltage,
                "rlnMicrographStartFrame": 1,
            }
        ]
    )
    frames = np.arange(1, n + 1)
    global_shift = pd.DataFrame(
        {
            "rlnMicrographFrameNumber": frames,
            "rlnMicrographShiftX": truth.shifts[:, 0],
            "rlnMicrographShiftY": truth.shifts[:, 1],
        }
    )
    gx = (np.arange(LOCAL_GRID) + 0.5) * nx / LOCAL_GRID
    gy = (np.arange(LOCAL_GRID) + 0.5) * ny / LOCAL_GRID
    px_, py_ = np.meshgrid(gx, gy)
    rows = []
    for t in range(n):
        sx, sy = truth.total_shift(t, px_.ravel(), py_.ravel(), params.shape, n)
        rows.append(
            pd.DataFrame(
                {
                    "rlnMicrographFrameNumber": t + 1,
                    "rlnCoordinateX": px_.ravel(),
                    "rlnCoordinateY": py_.ravel(),
                    "rlnMicrographShiftX": sx,
                    "rlnMicrographShiftY": sy,
                }
            )
        )
    write_star(
        path,
        {
            "general": general,
            "global_shift": global_shift,
            "local_shift": pd.concat(rows, ignore_index=True),
        },
    )


def simulate_dataset(
    params: SimulationParams,
    out_dir: str | os.PathLike[str],
    *,
    log: Callable[[str], None] = print,
) -> DatasetSummary:
    """Simulate ``params.n_movies`` movies into ``out_dir``.

    Writes ``movies/<stem>.mrc|.tif`` (raw counts, uint16), ``gain.mrc`` (multiply raw
    frames by it), ``simulation.yaml`` (every parameter and per-movie values) and
    ``truth/``: ``volume.mrc``, ``particles.star`` (optics + particles: coordinates,
    poses, per-particle CTF), ``micrographs_ctf.star``, ``junk.star``, ``defects.star``
    (hot pixels) and per movie ``<stem>_motion.star`` (global drift and the local
    deformation on a 5x5 grid), ``<stem>_ctf.star`` and ``<stem>_noiseless.mrc``
    (expected gain-corrected dose sum, no drift, no damage, no noise).

    A two-state specimen (``params.partial_fraction`` > 0: that fraction of the
    particles lacks the phantom's domain ``params.partial_domain``) adds
    ``truth/volume_partial.mrc`` (the partial state, same box, pixel size and frame as
    ``volume.mrc``) and the column ``rlnClassNumber`` to ``truth/particles.star``: the
    state of each particle, 1 = whole (``volume.mrc``), 2 = partial
    (``volume_partial.mrc``). Without it neither is written and the dataset is the same
    as before the option existed (bar the two parameters in ``simulation.yaml``).
    Junk (aggregates, ice) is the same in both cases.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    px = params.pixel_size
    seeds = np.random.SeedSequence(params.seed).spawn(params.n_movies + 1)
    specimen, volume = load_specimen(params)
    log(
        f"simulate: specimen {params.specimen!r} ({specimen.diameter:.0f} Å), "
        f"{params.n_movies} movies of {params.n_frames} x {params.height} x {params.width} px "
        f"at {px} Å/px -> {out}"
    )
    (out / "movies").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    write_mrc(out / "truth" / "volume.mrc", volume, px)
    two_states = params.partial_fraction > 0
    if two_states:
        write_mrc(
            out / "truth" / "volume_partial.mrc",
            _partial_volume(specimen, volume.shape[0], px),
            px,
        )
    detector = make_detector(params, np.random.default_rng(seeds[0]))
    write_mrc(out / "gain.mrc", detector.gain, px)
    write_star(
        out / "truth" / "defects.star",
        {
            "defects": pd.DataFrame(
                {
                    "rlnCoordinateX": detector.hot_pixels[:, 1].astype(float),
                    "rlnCoordinateY": detector.hot_pixels[:, 0].astype(float),
                }
            )
        },
    )

    particle_rows: list[pd.DataFrame] = []
    ctf_rows: list[dict[str, Any]] = []
    junk_rows: list[dict[str, Any]] = []
    movies: list[Path] = []
    per_movie: list[dict[str, Any]] = []
    for i in range(params.n_movies):
        t0 = time.perf_counter()
        rng = np.random.default_rng(seeds[i + 1])
        truth, frames = simulate_movie(params, i, specimen, detector, rng)
        name = f"movies/{truth.stem}{params.movie_suffix}"
        write_movie(
            out / name,
            frames,
            n_frames=params.n_frames,
            frame_shape=params.shape,
            dtype=np.uint16,
            pixel_size=px,
        )
        movies.append(out / name)
        assert truth.noiseless is not None
        write_mrc(out / "truth" / f"{truth.stem}_noiseless.mrc", truth.noiseless, px)
        _write_motion(out / "truth" / f"{truth.stem}_motion.star", params, truth, name)
        row = _ctf_row(params, truth)
        write_star(out / "truth" / f"{truth.stem}_ctf.star", {"micrograph": pd.DataFrame([row])})
        ctf_rows.append({"rlnMicrographName": name, **row})
        n = len(truth.coordinates)
        particle_rows.append(
            pd.DataFrame(
                {
                    "rlnMicrographName": [name] * n,
                    "rlnCoordinateX": truth.coordinates[:, 0],
                    "rlnCoordinateY": truth.coordinates[:, 1],
                    "rlnAngleRot": truth.angles[:, 0],
                    "rlnAngleTilt": truth.angles[:, 1],
                    "rlnAnglePsi": truth.angles[:, 2],
                    "rlnOriginXAngst": np.zeros(n),
                    "rlnOriginYAngst": np.zeros(n),
                    "rlnDefocusU": [truth.defocus_u] * n,
                    "rlnDefocusV": [truth.defocus_v] * n,
                    "rlnDefocusAngle": [truth.defocus_angle] * n,
                    "rlnPhaseShift": [params.phase_shift] * n,
                    "rlnOpticsGroup": [1] * n,
                }
            )
        )
        if two_states:
            particle_rows[-1]["rlnClassNumber"] = truth.states + 1
        for j in truth.junk:
            junk_rows.append(
                {
                    "rlnMicrographName": name,
                    "rlnCoordinateX": j["x"],
                    "rlnCoordinateY": j["y"],
                    "csnkJunkType": j["type"],
                    "csnkJunkDiameterAngst": j["diameter"],
                }
            )
        drift = float(np.hypot(*(truth.shifts[-1] - truth.shifts[0])))
        per_movie.append(
            {
                "movie": name,
                "particles": n,
                **({"partial_particles": int(truth.states.sum())} if two_states else {}),
                "junk": len(truth.junk),
                "defocus_u": round(truth.defocus_u, 1),
                "defocus_v": round(truth.defocus_v, 1),
                "defocus_angle": round(truth.defocus_angle, 2),
                "total_drift_px": round(drift, 2),
            }
        )
        partial = f" ({int(truth.states.sum())} partial)" if two_states else ""
        log(
            f"simulate: {name}: {n} particles{partial}, {len(truth.junk)} junk, defocus "
            f"{truth.defocus_u:.0f}/{truth.defocus_v:.0f} Å @ {truth.defocus_angle:.1f}°, "
            f"drift {drift:.1f} px ({time.perf_counter() - t0:.1f} s)"
        )

    optics = optics_table(
        pixel_size=px,
        voltage=params.voltage,
        cs=params.cs,
        amplitude_contrast=params.amplitude_contrast,
    )
    particles = pd.concat(particle_rows, ignore_index=True)
    write_star(out / "truth" / "particles.star", {"optics": optics, "particles": particles})
    ctf_df = pd.DataFrame(ctf_rows).assign(rlnOpticsGroup=1)
    write_star(out / "truth" / "micrographs_ctf.star", {"optics": optics, "micrographs": ctf_df})
    junk_df = pd.DataFrame(
        junk_rows,
        columns=[
            "rlnMicrographName",
            "rlnCoordinateX",
            "rlnCoordinateY",
            "csnkJunkType",
            "csnkJunkDiameterAngst",
        ],
    )
    write_star(out / "truth" / "junk.star", {"junk": junk_df})
    record = {
        "cryosnake_version": __version__,
        "parameters": params.as_dict(),
        "particle_diameter_angst": round(specimen.diameter, 2),
        "volume_box": int(volume.shape[0]),
        "movies": per_movie,
    }
    write_yaml(out / "simulation.yaml", record)
    seconds = time.perf_counter() - start
    log(f"simulate: wrote {len(movies)} movies, {len(particles)} particles in {seconds:.1f} s")
    return DatasetSummary(out, movies, len(particles), seconds)
