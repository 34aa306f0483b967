"""Contrast transfer function (RELION/CTFFIND conventions).

Units: Å, kV, mm (Cs), degrees. Defocus is positive for underfocus; ``defocus_u`` is
the defocus along the axis at ``angle`` degrees counter-clockwise from the image x
axis (columns), ``defocus_v`` the one perpendicular to it.

    chi(s, a) = pi*lambda*s^2*df(a) - pi/2*Cs*lambda^3*s^4 - phase_shift
    df(a)     = 0.5*(dfU + dfV + (dfU - dfV)*cos(2*(a - angle)))
    CTF       = -sqrt(1 - w^2)*sin(chi) - w*cos(chi)
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from cryosnake.backend import get_array_module

__all__ = [
    "CTF_COLUMNS",
    "ctf_2d",
    "ctf_phase",
    "ctf_value",
    "frequency_grid",
    "interaction_constant",
    "model_ctf",
    "wavelength",
]

_RADIAN = math.pi / 180.0

# Per-particle CTF parameters, in this order, as the columns of the (n, 7) CTF tables of
# particles (ParticleData.ctf of class2d; the CTF arrays of initial3d and refine3d).
CTF_COLUMNS = (
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
)


def wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å (300 kV -> 0.01969 Å)."""
    return float(_wavelengths(voltage_kv))


def _wavelengths(voltage_kv: Any) -> Any:
    """:func:`wavelength` of a scalar or an array of voltages (kV), float64 NumPy."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def interaction_constant(voltage_kv: float) -> float:
    """Electron interaction constant sigma_e in rad/(V·Å) (300 kV -> ~6.5e-4).

    sigma_e = 2*pi/(lambda*V) * (m0c^2 + eV)/(2*m0c^2 + eV), m0c^2 = 511 keV.
    """
    v = voltage_kv * 1e3
    mc2 = 510998.95  # eV
    return 2.0 * math.pi / (wavelength(voltage_kv) * v) * (mc2 + v) / (2.0 * mc2 + v)


def frequency_grid(
    shape: tuple[int, int],
    pixel_size: float,
    *,
    rfft: bool = True,
    xp: ModuleType = np,
    dtype: Any = np.float32,
) -> tuple[Any, Any]:
    """Spatial frequencies (1/Å) of a 2D FFT.

    Returns
    -------
    kx, ky : broadcastable arrays, shapes (1, nx or nx//2+1) and (ny, 1).
        kx runs along columns (image x), ky along rows (image y).
    """
    ny, nx = shape
    fx = (xp.fft.rfftfreq(nx) if rfft else xp.fft.fftfreq(nx)) / pixel_size
    fy = xp.fft.fftfreq(ny) / pixel_size
    return fx.astype(dtype)[None, :], fy.astype(dtype)[:, None]


def ctf_phase(
    s2: Any,
    azimuth: Any,
    defocus_u: Any,
    defocus_v: Any,
    angle: Any,
    *,
    voltage: Any,
    cs: Any,
    phase_shift: Any = 0.0,
) -> Any:
    """The CTF's phase ``chi`` (rad), the one formula of the module docstring.

    Every argument broadcasts against the others (NumPy or CuPy arrays, or scalars), so
    one call serves one image (scalar parameters on a frequency grid) or a batch
    (parameter columns (nb, 1) against frequency rows (1, F)).

    s2 : squared spatial frequency (1/Å²); azimuth : rad, counter-clockwise from x
    defocus_u, defocus_v : Å; angle : degrees; voltage : kV; cs : mm
    phase_shift : degrees
    """
    xp = get_array_module(s2)
    lam = _wavelengths(voltage)
    lam = xp.asarray(lam) if np.ndim(lam) else float(lam)
    df = 0.5 * (
        defocus_u + defocus_v + (defocus_u - defocus_v) * xp.cos(2.0 * (azimuth - angle * _RADIAN))
    )
    return (
        math.pi * lam * s2 * df
        - 0.5 * math.pi * (cs * 1e7) * lam**3 * s2 * s2
        - phase_shift * _RADIAN
    )


def ctf_value(chi: Any, amplitude_contrast: Any) -> Any:
    """The CTF of phase ``chi``: ``-sqrt(1 - w^2) sin(chi) - w cos(chi)``."""
    xp = get_array_module(chi)
    w = amplitude_contrast
    return -((1.0 - w * w) ** 0.5) * xp.sin(chi) - w * xp.cos(chi)


def ctf_2d(
    shape: tuple[int, int],
    pixel_size: float,
    defocus_u: float,
    defocus_v: float,
    angle: float,
    *,
    voltage: float = 300.0,
    cs: float = 2.7,
    amplitude_contrast: float = 0.07,
    phase_shift: float = 0.0,
    bfactor: float = 0.0,
    rfft: bool = True,
    xp: ModuleType = np,
) -> Any:
    """The CTF sampled on the FFT grid of an image of ``shape``.

    Parameters
    ----------
    shape : (ny, nx)
    pixel_size : Å
    defocus_u, defocus_v : Å, positive = underfocus
    angle : degrees, U axis from the x axis, counter-clockwise
    voltage : kV
    cs : mm
    amplitude_contrast : fraction w
    phase_shift : degrees (phase plate)
    bfactor : Å^2; multiplies by exp(-B s^2 / 4) when > 0
    rfft : grid of ``rfft2`` (ny, nx//2+1) or of ``fft2`` (ny, nx)
    xp : array module (numpy or cupy)

    Returns
    -------
    ctf : (ny, nx//2+1) or (ny, nx) float32
    """
    kx, ky = frequency_grid(shape, pixel_size, rfft=rfft, xp=xp, dtype=np.float64)
    s2 = kx * kx + ky * ky
    chi = ctf_phase(
        s2,
        xp.arctan2(ky, kx),
        defocus_u,
        defocus_v,
        angle,
        voltage=voltage,
        cs=cs,
        phase_shift=phase_shift,
    )
    ctf = ctf_value(chi, amplitude_contrast)
    if bfactor > 0:
        ctf = ctf * xp.exp(-0.25 * bfactor * s2)
    return ctf.astype(xp.float32)


def model_ctf(params: np.ndarray, kx: Any, ky: Any) -> Any:
    """Model CTF of a batch of particles at frequencies (kx, ky) (F,) 1/Å: ``-ctf_2d``
    (the contrast of extracted particles is inverted), one row per particle.

    params : (nb, 7) NumPy (:data:`CTF_COLUMNS`). Returns (nb, F) float32 on kx's device.
    """
    xp = get_array_module(kx)
    p = xp.asarray(params, dtype=xp.float64)
    chi = ctf_phase(
        (kx * kx + ky * ky)[None, :],
        xp.arctan2(ky, kx)[None, :],
        p[:, 0:1],
        p[:, 1:2],
        p[:, 2:3],
        voltage=np.asarray(params, dtype=np.float64)[:, 4:5],
        cs=p[:, 5:6],
        phase_shift=p[:, 3:4],
    )
    return (-ctf_value(chi, p[:, 6:7])).astype(xp.float32)
