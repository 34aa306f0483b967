"""Reference-free 2D classification by maximum likelihood (Scheres 2012, RELION).

Each particle image is modelled as one of ``K`` class averages, rotated in plane,
shifted, multiplied by the particle's CTF and added to noise of a radial power
spectrum; expectation-maximisation marginalises the class, rotation and translation
and refines the classes, the noise spectrum and the priors (the model and the
iteration are stated in :mod:`~cryosnake.ops.class2d.engine`).

Modules:

- :mod:`~cryosnake.ops.class2d.data`: the inputs, :class:`Class2DSettings` and
  :class:`ParticleData`.
- :mod:`~cryosnake.ops.class2d.images`: the particle images: soft masks, resampling to
  the working box and Fourier transforms (:func:`prepare_particles`,
  :func:`prepare_spectra`, :func:`resize_images`, :func:`soft_circle`,
  :data:`MASK_EDGE`), re-centring of class averages; the mask and contrast conventions.
- :mod:`~cryosnake.ops.class2d.project`: the frequencies and the rotation and
  translation tables of an iteration, the pose conventions (the 2D projector itself,
  padded grid, back-projection, gridding and reconstruction, is
  :mod:`cryosnake.ops.fourier_slice.image`).
- :mod:`~cryosnake.ops.class2d.estep`: one pass over the particles: the E-step
  posteriors (significant weights only) and the M-step sums.
- :mod:`~cryosnake.ops.class2d.engine`: the EM iterations and their state:
  :class:`Class2DState`, :func:`initial_state`, :func:`em_iteration` (M-step, noise
  spectrum, resolution, re-seeding, convergence) and :func:`subset_averages`.
- :mod:`~cryosnake.ops.class2d.scores`: :func:`class_scores`, how particle-like each
  class average is (``select2d``).
- :mod:`~cryosnake.ops.class2d.common`: radial shells, the resolution from the SSNR,
  host copies.

The particles' CTF model, :func:`cryosnake.ops.ctf.model_ctf` (re-exported here), and
the order of their CTF parameters, :data:`cryosnake.ops.ctf.CTF_COLUMNS`, are in
:mod:`cryosnake.ops.ctf`.
"""

from cryosnake.ops.class2d.data import Class2DSettings, ParticleData
from cryosnake.ops.class2d.engine import (
    Class2DState,
    em_iteration,
    initial_state,
    subset_averages,
)
from cryosnake.ops.class2d.images import (
    MASK_EDGE,
    prepare_particles,
    prepare_spectra,
    resize_images,
    soft_circle,
)
from cryosnake.ops.class2d.scores import class_scores
from cryosnake.ops.ctf import model_ctf

__all__ = [
    "MASK_EDGE",
    "Class2DSettings",
    "Class2DState",
    "ParticleData",
    "class_scores",
    "em_iteration",
    "initial_state",
    "model_ctf",
    "prepare_particles",
    "prepare_spectra",
    "resize_images",
    "soft_circle",
    "subset_averages",
]
