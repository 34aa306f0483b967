"""Particles of several optics groups of other pixel and box sizes, brought to one
working grid (:func:`cryosnake.stages._particles.open_particles`), against the truth.

Two simulated groups of one specimen: 300 particles of 48 px at 4.5 Å/px and 300 of
44 px at 5.0 Å/px, in one RELION 3.1 file with two optics groups. Reconstructed at
their true poses, the two groups together give a map closer to the truth than the
first group alone; the second group's images taken as they are (cut to 48 px, as if at
4.5 Å/px: what a reader that ignores the optics groups would do) blur it instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from particles_sim import AMPLITUDE_CONTRAST, CS, VOLTAGE, ParticleStack, simulate_particles

from cryosnake.io import optics_table, write_mrc, write_star
from cryosnake.ops import refine3d as r3
from cryosnake.ops.fourier import rescale_images
from cryosnake.ops.fsc import fsc
from cryosnake.stages._particles import ctf_table, open_particles

GROUPS = ((48, 4.5), (44, 5.0))  # (box, Å/px) of each optics group


def _two_groups(folder: Path) -> tuple[Path, list[ParticleStack]]:
    stacks, optics, rows = [], [], []
    for g, (box, px) in enumerate(GROUPS, start=1):
        stack = simulate_particles(300, box=box, pixel_size=px, junk_fraction=0.0, seed=30 + g)
        mrcs = folder / f"group{g}.mrcs"
        write_mrc(mrcs, stack.images, px)
        optics.append(
            optics_table(
                pixel_size=px, voltage=VOLTAGE, cs=CS, amplitude_contrast=AMPLITUDE_CONTRAST,
                image_size=box, image_pixel_size=px, group_name=f"opticsGroup{g}",
            ).assign(rlnOpticsGroup=g)
        )  # fmt: skip
        n = len(stack.images)
        rows.append(
            pd.DataFrame(
                {
                    "rlnImageName": [f"{i + 1:06d}@{mrcs}" for i in range(n)],
                    "rlnDefocusU": stack.defocus[:, 0],
                    "rlnDefocusV": stack.defocus[:, 1],
                    "rlnDefocusAngle": stack.defocus[:, 2],
                    "rlnOpticsGroup": np.full(n, g),
                }
            )
        )
        stacks.append(stack)
    star = folder / "particles.star"
    write_star(star, {"optics": pd.concat(optics, ignore_index=True), "particles": pd.concat(rows)})
    return star, stacks


def _truth_fsc(images: np.ndarray, ctf: np.ndarray, matrices: np.ndarray,
               shifts: np.ndarray, truth: np.ndarray) -> float:  # fmt: skip
    """Mean FSC against the truth, over the shells to 12 Å, of the map reconstructed at
    the given poses."""
    px, box = GROUPS[0][1], GROUPS[0][0]
    spectra = r3.particle_spectra(images)
    settings = r3.RefineSettings(mask_diameter=165 / px, max_shift=2.0)
    halves = np.arange(len(images)) % 2
    sigma2 = r3.initial_refine_state(spectra, truth, px, 30.0, settings, halves).sigma2
    rec = r3.reconstruct_halves(
        spectra, ctf, matrices, shifts, halves, sigma2, px, settings.mask_diameter
    )
    mask = r3.soft_sphere(box, settings.mask_diameter)
    curve = fsc(rec["full"] * mask, truth * mask)
    return float(curve[1 : int(box * px / 12.0) + 1].mean())


def test_groups_of_other_pixel_and_box_sizes_add_signal(tmp_path: Path) -> None:
    star, (a, b) = _two_groups(tmp_path)
    pset = open_particles(star)
    assert (pset.pixel_size, pset.box) == (4.5, 48)
    assert list(pset.rescaled) == [tmp_path / "group2.mrcs"]
    assert pset.optics["rlnImageSize"].tolist() == [48, 44]
    assert "working at 4.5 Å/px × 48 px" in pset.describe()
    images = pset.reader().read(np.arange(len(pset)))
    ctf = ctf_table(pset.particles, pset.values)
    matrices = np.concatenate([a.matrices, b.matrices])
    shifts = np.concatenate([a.centres, b.centres * GROUPS[1][1] / GROUPS[0][1]])
    truth = a.volume()
    first = np.arange(len(a.images))
    alone = _truth_fsc(images[first], ctf[first], a.matrices, a.centres, truth)
    both = _truth_fsc(images, ctf, matrices, shifts, truth)
    as_is = np.concatenate([a.images, rescale_images(b.images, 1.0, 1.0, GROUPS[0][0])])
    ignored = _truth_fsc(as_is, ctf, matrices, np.concatenate([a.centres, b.centres]), truth)
    print(f"mean FSC to 12 Å: first group {alone:.3f}, both {both:.3f}, ignored {ignored:.3f}")
    assert both > alone + 0.02
    assert ignored < alone
