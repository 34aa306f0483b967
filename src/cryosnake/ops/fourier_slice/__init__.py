"""The Fourier-slice core: projection and back-projection of volumes (3D) and
rotation of images (2D) on padded Fourier grids, with one set of frequency rules.

- :mod:`~cryosnake.ops.fourier_slice.grid`: the kept frequencies of an image half plane
  (shells ``rint(|k|) <= r_max``, no Nyquist row or column), phase ramps of shifts, the
  gridding apodisation of linear interpolation, the default padding (2, as RELION).
- :mod:`~cryosnake.ops.fourier_slice.volume`: central sections of a volume's padded
  transform (trilinear), Fourier insertion and the regularised reconstruction, the
  core of initial3d and refine3d.
- :mod:`~cryosnake.ops.fourier_slice.image`: the 2D counterpart (bilinear), rotated
  class references and their reconstruction in 2D classification.

The simulator keeps projecting in real space (:func:`cryosnake.ops.project.project_volume`
and the exact projections of Gaussian atoms): the ground truth stays independent of the
projector it is used to test.
"""

from cryosnake.ops.fourier_slice.grid import (
    BATCH,
    PAD,
    HalfPlane,
    gridding,
    half_plane,
    phase_ramps,
    plane_shells,
)
from cryosnake.ops.fourier_slice.image import (
    RotationCells,
    backproject_images,
    pad_image_spectra,
    padded_image_shells,
    project_images,
    reconstruct_images,
    rotation_cells,
)
from cryosnake.ops.fourier_slice.volume import (
    BackProjector,
    Projector,
    pad_volume_spectrum,
    padded_shells,
    project,
    reconstruct,
)

__all__ = [
    "BATCH",
    "PAD",
    "BackProjector",
    "HalfPlane",
    "Projector",
    "RotationCells",
    "backproject_images",
    "gridding",
    "half_plane",
    "pad_image_spectra",
    "pad_volume_spectrum",
    "padded_image_shells",
    "padded_shells",
    "phase_ramps",
    "plane_shells",
    "project",
    "project_images",
    "reconstruct",
    "reconstruct_images",
    "rotation_cells",
]
