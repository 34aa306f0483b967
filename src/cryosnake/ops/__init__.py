"""Pure array-in/array-out numerics; never sees a path.

Functions follow their input's device (NumPy or CuPy, see :mod:`cryosnake.backend`).
"""

from cryosnake.ops.ctf import ctf_2d, frequency_grid, interaction_constant, wavelength
from cryosnake.ops.dose import critical_exposure, damage_attenuation
from cryosnake.ops.fourier import fourier_crop, phase_ramp, register_translation, shift_image
from cryosnake.ops.project import project_volume
from cryosnake.ops.rotation import euler_to_matrix, matrix_to_euler, random_rotations

__all__ = [
    "critical_exposure",
    "ctf_2d",
    "damage_attenuation",
    "euler_to_matrix",
    "fourier_crop",
    "frequency_grid",
    "interaction_constant",
    "matrix_to_euler",
    "phase_ramp",
    "project_volume",
    "random_rotations",
    "register_translation",
    "shift_image",
    "wavelength",
]
