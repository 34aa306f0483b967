"""The pickers' working image and its Fourier filters.

Both pickers work on a Fourier-cropped copy of the micrograph in which the particle
radius ``r`` (half the ``diameter``, the particle's longest extent) spans about
:data:`PIXELS_PER_RADIUS` pixels; every filter is expressed in units of ``r``, so the
method is the same for any particle size and pixel size. The copy is mirror-padded by
1.5 ``r`` so that the FFT filters do not wrap around. :class:`_Work` holds it: the
padded spectrum and its frequency grid, the CTF (:class:`MicrographCtf`) and its sign
for phase flipping, the whitening of blob picking with a CTF
(:mod:`cryosnake.ops.pick.blob`, step 1), and the Gaussian, Laplacian-of-Gaussian
(:data:`BLOB_SIGMA`) and band-pass filters and the local energy built on them. Its
FFT work follows the input's array module; :meth:`_Work.host` brings the unpadded part
of a map to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from cryosnake.backend import fft_kwargs, fft_module, get_array_module, to_host
from cryosnake.ops.ctf import ctf_2d
from cryosnake.ops.fourier import fourier_crop
from cryosnake.ops.noise import NoisePower, noise_power

__all__ = [
    "BLOB_SIGMA",
    "PIXELS_PER_RADIUS",
    "MicrographCtf",
    "working_shape",
]

PIXELS_PER_RADIUS = 12.0  # particle radius in working pixels
BLOB_SIGMA = 0.5  # blob detector: LoG sigma, x r


@dataclass(frozen=True)
class MicrographCtf:
    """CTF of a micrograph (RELION conventions: Å, degrees, kV, mm)."""

    defocus_u: float
    defocus_v: float
    angle: float
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07
    phase_shift: float = 0.0

    def image(
        self, shape: tuple[int, int], pixel_size: float, *, rfft: bool = True, xp: ModuleType = np
    ) -> Any:
        """This CTF on the FFT grid of an image of ``shape`` (:func:`ctf_2d`)."""
        return ctf_2d(
            shape, pixel_size, self.defocus_u, self.defocus_v, self.angle,
            voltage=self.voltage, cs=self.cs, amplitude_contrast=self.amplitude_contrast,
            phase_shift=self.phase_shift, rfft=rfft, xp=xp,
        )  # fmt: skip


def working_shape(shape: tuple[int, int], pixel_size: float, diameter: float) -> tuple[int, int]:
    """Even shape of the working image: the radius spans ~PIXELS_PER_RADIUS pixels.

    Micrographs are never upsampled: when the particle is already small in pixels
    the working image is the micrograph (cropped to even sizes).
    """
    factor = max(1.0, 0.5 * diameter / pixel_size / PIXELS_PER_RADIUS)
    ny, nx = shape
    return (max(2, int(ny / factor / 2.0) * 2), max(2, int(nx / factor / 2.0) * 2))


class _Work:
    """The working image (padded spectrum), its frequency grid and CTF sign."""

    def __init__(
        self,
        image: Any,
        pixel_size: float,
        diameter: float,
        ctf: MicrographCtf | None,
        *,
        whiten: bool = False,
    ) -> None:
        xp = get_array_module(image)
        self.xp: ModuleType = xp
        self.fft = fft_module(xp)
        self.kw = fft_kwargs(xp)
        img = xp.asarray(image, dtype=xp.float32)
        ny, nx = (int(n) for n in img.shape)
        self.micrograph_shape = (ny, nx)
        my, mx = working_shape((ny, nx), pixel_size, diameter)
        if (my, mx) == (ny // 2 * 2, nx // 2 * 2):  # no downsampling: crop to even sizes
            small = img[:my, :mx]
            self.scale = (1.0, 1.0)
        else:
            small = fourier_crop(img, (my, mx))
            self.scale = (ny / my, nx / mx)
        self.shape = (my, mx)
        self.pixel = (pixel_size * self.scale[0], pixel_size * self.scale[1])
        self.pixel_size = pixel_size
        self.r = 0.5 * diameter  # Å
        self.r_px = self.r / (0.5 * (self.pixel[0] + self.pixel[1]))
        small = small - small.mean()
        spread = max(float(small.std()), 1e-20)
        small = small / spread
        self.pad = int(math.ceil(1.5 * self.r_px))
        padded = xp.pad(small, self.pad, mode="reflect")
        self.padded_shape = (int(padded.shape[0]), int(padded.shape[1]))
        self.spec = self.fft.rfft2(padded, **self.kw)
        py, px = self.padded_shape
        ky = xp.fft.fftfreq(py).astype(xp.float32)[:, None] / self.pixel[0]
        kx = xp.fft.rfftfreq(px).astype(xp.float32)[None, :] / self.pixel[1]
        self.s2 = ky * ky + kx * kx
        if ctf is None:
            self.ctf = None
            self.flip: Any = -1.0
        else:
            self.ctf = ctf.image(self.padded_shape, 0.5 * (self.pixel[0] + self.pixel[1]), xp=xp)
            self.flip = xp.where(self.ctf < 0, -1.0, 1.0).astype(xp.float32)
        self.crop = (slice(self.pad, self.pad + my), slice(self.pad, self.pad + mx))
        self._band: Any = None
        self.noise: NoisePower | None = None
        self.detect = self.spec  # the spectrum the detectors see (whitened: see whiten)
        self.gain: Any = None  # the whitening filter
        if whiten and self.ctf is not None:
            self.noise = noise_power(img, pixel_size, ctf)
        if self.noise is not None and self.ctf is not None:
            # background variance per working pixel at each frequency: that of the
            # micrograph times the Fourier crop's averaging (my mx / ny nx), over the
            # normalisation
            factor = (my * mx) / (ny * nx) / (spread * spread)
            c2 = self.ctf * self.ctf
            variance = self.noise(xp.sqrt(self.s2)) + self.noise.texture * c2
            variance = variance * factor
            floor = 1e-6 * float(variance.max())
            self.gain = (1.0 / xp.sqrt(xp.maximum(variance, floor))).astype(xp.float32)
            self.detect = self.spec * self.gain

    def gauss(self, sigma: float) -> Any:
        """Transfer function of a Gaussian blur of ``sigma`` Å."""
        return self.xp.exp(-2.0 * math.pi**2 * sigma * sigma * self.s2)

    def log(self, sigma: float) -> Any:
        """Scale-normalised negative Laplacian of Gaussian: bright blobs respond > 0."""
        return (2.0 * math.pi * sigma) ** 2 * self.s2 * self.gauss(sigma)

    def blob_filter(self) -> Any:
        """The blob detector: scale-normalised LoG at sigma = :data:`BLOB_SIGMA` r."""
        return self.log(BLOB_SIGMA * self.r)

    def real(self, spectrum: Any) -> Any:
        """Inverse FFT on the padded grid (device array)."""
        return self.fft.irfft2(spectrum, s=self.padded_shape, **self.kw)

    def host(self, padded: Any) -> np.ndarray:
        """The unpadded part of a padded map, on the host, float64."""
        return np.asarray(to_host(padded[self.crop]), dtype=np.float64)

    def band_filter(self, low: float = 0.1, high: float = 0.53) -> Any:
        """Band-pass between Gaussians of ``low`` r and ``high`` r (default: the detail
        inside a particle)."""
        return self.gauss(low * self.r) * (1.0 - self.gauss(high * self.r))

    def band(self) -> Any:
        """The phase-flipped, band-passed micrograph (padded, device)."""
        if self._band is None:
            self._band = self.real(self.detect * self.flip * self.band_filter())
        return self._band

    def energy(self, sigma: float) -> np.ndarray:
        """Local energy: the band-passed image squared, smoothed over ``sigma`` Å."""
        b = self.band()
        return self.host(self.real(self.fft.rfft2(b * b, **self.kw) * self.gauss(sigma)))

    def view(self) -> np.ndarray:
        """Phase-flipped micrograph low-passed at 0.1 r (for plots), float32."""
        f = self.spec * self.flip * self.gauss(0.1 * self.r) * (1.0 - self.gauss(2.0 * self.r))
        return self.host(self.real(f)).astype(np.float32)
