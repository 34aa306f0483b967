"""Particle picking: reference-free blob picking and template matching.

Both pickers work on a Fourier-cropped copy of the micrograph in which the particle
radius ``r`` (half the ``diameter``, the particle's longest extent) spans about
:data:`PIXELS_PER_RADIUS` pixels, with every filter expressed in units of ``r``. Each
finds candidates as the maxima of a localisation map, scores them with a figure of merit
(robust z-scores against the micrograph's background), keeps those above an automatic
threshold (what white noise through the same filters would give) and rejects those at
an edge, on ice or carbon, or in aggregates.

Modules:

- :mod:`~cryosnake.ops.pick.filters`: the working image (Fourier crop, mirror padding,
  CTF and phase flipping, whitening) and its Fourier filters; :class:`MicrographCtf`,
  :func:`working_shape`.
- :mod:`~cryosnake.ops.pick.peaks`: peak finding (non-maximum suppression) and
  sub-pixel refinement.
- :mod:`~cryosnake.ops.pick.null`: robust background statistics, the null model of
  noise peaks and the automatic (Benjamini-Hochberg) threshold.
- :mod:`~cryosnake.ops.pick.select`: from a localisation map to picks: figure of
  merit, threshold, rejection of edges, ice and carbon, aggregates (profile and rival
  tests) and shoulders; :class:`Picks`.
- :mod:`~cryosnake.ops.pick.blob`: :func:`pick_blobs`, reference-free blob picking.
- :mod:`~cryosnake.ops.pick.template`: :func:`pick_templates`, template matching, and
  :func:`resample_images`.

Device: the FFT work (cropping, filtering, correlation) follows the input's array
module; the maps, a few hundred pixels a side, are brought to the host for peak
finding and statistics, and results come back as NumPy arrays.
"""

from cryosnake.ops.pick.blob import MASS_RADIUS, WIENER, pick_blobs
from cryosnake.ops.pick.filters import (
    BLOB_SIGMA,
    PIXELS_PER_RADIUS,
    MicrographCtf,
    working_shape,
)
from cryosnake.ops.pick.null import FALSE_PICK_RATE
from cryosnake.ops.pick.select import (
    BACKGROUND_SCALE,
    CONTRAST_Z,
    DENSE_Z,
    MIN_FREE,
    MIN_POPULATION,
    PROFILE_Z,
    RIVAL_RING,
    RIVAL_Z,
    SEPARATION,
    SHOULDER_DISTANCE,
    SHOULDER_RATIO,
    UNSET_PSI,
    Picks,
)
from cryosnake.ops.pick.template import (
    RECENTRE_RADIUS,
    TEMPLATE_BAND,
    TEMPLATE_ENERGY_WEIGHT,
    TEMPLATE_MASK,
    TEMPLATE_PROFILE_Z,
    pick_templates,
    resample_images,
)

__all__ = [
    "BACKGROUND_SCALE",
    "BLOB_SIGMA",
    "CONTRAST_Z",
    "DENSE_Z",
    "FALSE_PICK_RATE",
    "MASS_RADIUS",
    "MIN_FREE",
    "MIN_POPULATION",
    "PIXELS_PER_RADIUS",
    "PROFILE_Z",
    "RECENTRE_RADIUS",
    "RIVAL_RING",
    "RIVAL_Z",
    "SEPARATION",
    "SHOULDER_DISTANCE",
    "SHOULDER_RATIO",
    "TEMPLATE_BAND",
    "TEMPLATE_ENERGY_WEIGHT",
    "TEMPLATE_MASK",
    "TEMPLATE_PROFILE_Z",
    "UNSET_PSI",
    "WIENER",
    "MicrographCtf",
    "Picks",
    "pick_blobs",
    "pick_templates",
    "resample_images",
    "working_shape",
]
