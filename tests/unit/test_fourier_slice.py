"""3D Fourier projector, back-projector, reconstruction (ops.fourier_slice) and FSC (ops.fsc)."""

from __future__ import annotations

import numpy as np
import pytest

from cryosnake.backend import gpu_available
from cryosnake.ops import fourier_slice as fs
from cryosnake.ops.ctf import ctf_2d
from cryosnake.ops.fourier import shift_image
from cryosnake.ops.fsc import fsc, fsc_at_resolution, shell_frequencies, shell_resolution
from cryosnake.ops.project import project_volume
from cryosnake.ops.rotation import euler_to_matrix, random_rotations
from cryosnake.simulate import phantom_atoms, render_volume

PX = 5.0  # Å per voxel of the phantom tests
BOX = 40  # phantom tests
N = 32  # reconstruction tests
VIEWS = 3000  # rotations of the reconstruction tests


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def phantom_volume() -> np.ndarray:
    return render_volume(phantom_atoms(150.0), BOX, PX)


class Blobs:
    """A volume made of isotropic Gaussian blobs, whose projections are exact 2D
    Gaussians: noiseless images computed independently of any projector."""

    def __init__(self, n: int, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        pts = rng.uniform(-1.0, 1.0, (4 * count, 3))
        self.n = n
        self.centres = pts[np.linalg.norm(pts, axis=1) < 1.0][:count] * (n / 3.0)  # (x, y, z)
        self.sigma = rng.uniform(1.0, 2.0, count)
        self.mass = rng.uniform(0.5, 1.5, count)

    def volume(self) -> np.ndarray:
        g = np.arange(self.n, dtype=np.float64) - self.n // 2
        zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
        out = np.zeros((self.n,) * 3)
        for c, s, a in zip(self.centres, self.sigma, self.mass, strict=True):
            d2 = (xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2
            out += a / (2 * np.pi * s * s) ** 1.5 * np.exp(-d2 / (2 * s * s))
        return out.astype(np.float32)

    def images(self, matrices: np.ndarray, shifts: np.ndarray | None = None) -> np.ndarray:
        """(m, n, n) projections: blob r lands at (A r)[:2] + t."""
        g = np.arange(self.n, dtype=np.float64) - self.n // 2
        yy, xx = np.meshgrid(g, g, indexing="ij")
        pos = np.einsum("mij,bj->mbi", matrices, self.centres)[..., :2]
        if shifts is not None:
            pos = pos + shifts[:, None, :]
        out = np.zeros((len(matrices), self.n, self.n))
        for b, (s, a) in enumerate(zip(self.sigma, self.mass, strict=True)):
            d2 = (xx[None] - pos[:, b, 0, None, None]) ** 2
            d2 += (yy[None] - pos[:, b, 1, None, None]) ** 2
            out += a / (2 * np.pi * s * s) * np.exp(-d2 / (2 * s * s))
        return out.astype(np.float32)


def spectra_of(images: np.ndarray) -> np.ndarray:
    """rfft2 half planes with the origin (pixel n//2) moved to index 0."""
    return np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))


def image_of(spectrum: np.ndarray, n: int) -> np.ndarray:
    return np.fft.fftshift(np.fft.irfft2(spectrum, s=(n, n), axes=(-2, -1)), axes=(-2, -1))


def lowpass(spectrum: np.ndarray, n: int, fraction: float) -> np.ndarray:
    """Zero the frequencies beyond ``fraction`` of Nyquist."""
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    return spectrum * (np.sqrt(kx * kx + ky * ky) <= 0.5 * fraction)


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64).ravel() - np.mean(a)
    b = np.asarray(b, dtype=np.float64).ravel() - np.mean(b)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def radius_map(n: int) -> np.ndarray:
    ky = np.fft.fftfreq(n)[:, None] * n
    kx = np.arange(n // 2 + 1)[None, :]
    return np.sqrt(kx * kx + ky * ky)


# --------------------------------------------------------------------------- projector


@pytest.mark.parametrize("pad", [2, 3])
def test_projection_matches_real_space_projection(phantom_volume: np.ndarray, pad: int) -> None:
    spec = fs.pad_volume_spectrum(phantom_volume, pad=pad)
    assert spec.shape == (pad * BOX, pad * BOX, pad * BOX // 2 + 1)
    assert spec.dtype == np.complex64
    mats = random_rotations(6, np.random.default_rng(11))
    proj = fs.project(spec, mats, BOX, batch=4)
    assert proj.shape == (6, BOX, BOX // 2 + 1) and proj.dtype == np.complex64
    for a, p in zip(mats, proj, strict=True):
        ref = spectra_of(project_volume(phantom_volume, a))
        ours = image_of(lowpass(p, BOX, 2 / 3), BOX)
        truth = image_of(lowpass(ref, BOX, 2 / 3), BOX)
        assert ncc(ours, truth) > 0.995
        assert np.linalg.norm(ours) == pytest.approx(np.linalg.norm(truth), rel=0.05)
    # The comparison tells the convention apart: the inverse rotation does not match.
    a = euler_to_matrix(-40.0, 100.0, 60.0)
    truth = image_of(lowpass(spectra_of(project_volume(phantom_volume, a)), BOX, 2 / 3), BOX)
    wrong = image_of(lowpass(fs.project(spec, a.T, BOX)[0], BOX, 2 / 3), BOX)
    assert ncc(wrong, truth) < 0.9
    # The DC term is the integral of the volume (no scale factor), up to the gridding
    # pre-correction, which overweights the outer density at the grid points.
    assert proj[:, 0, 0].real == pytest.approx(float(phantom_volume.sum()), rel=0.05)


@pytest.mark.parametrize(("pad", "tolerance"), [(2, 0.05), (3, 0.025)])
def test_projection_matches_exact_projections(pad: int, tolerance: float) -> None:
    """Against the analytic projections of Gaussian blobs: the interpolation error."""
    blobs = Blobs(N, 24, seed=0)
    mats = random_rotations(20, np.random.default_rng(3))
    exact = spectra_of(blobs.images(mats))
    proj = fs.project(fs.pad_volume_spectrum(blobs.volume(), pad=pad), mats, N, batch=7)
    inside = np.rint(radius_map(N)) <= 0.8 * N / 2
    error = np.linalg.norm((proj - exact)[:, inside]) / np.linalg.norm(exact[:, inside])
    assert error < tolerance
    assert min(ncc(image_of(p, N), image_of(e, N)) for p, e in zip(proj, exact, strict=True)) > (
        1 - tolerance**2
    )


def test_projection_is_the_spectrum_of_a_real_image(phantom_volume: np.ndarray) -> None:
    """Friedel mates on the kx = 0 column agree: irfft2 then rfft2 changes nothing."""
    spec = fs.pad_volume_spectrum(phantom_volume)
    proj = fs.project(spec, random_rotations(3, np.random.default_rng(2)), BOX)
    back = np.fft.rfft2(np.fft.irfft2(proj, s=(BOX, BOX)))
    np.testing.assert_allclose(back, proj, atol=1e-4 * np.abs(proj).max())


def test_projection_band_limit(phantom_volume: np.ndarray) -> None:
    spec = fs.pad_volume_spectrum(phantom_volume)
    mats = random_rotations(2, np.random.default_rng(3))
    full = fs.project(spec, mats, BOX)
    low = fs.project(spec, mats, BOX, r_max=7)
    shell = np.rint(radius_map(BOX))
    assert np.all(low[:, shell > 7] == 0)
    np.testing.assert_array_equal(low[:, shell <= 7], full[:, shell <= 7])
    # The Nyquist row and column are never filled.
    assert np.all(full[:, BOX // 2, :] == 0) and np.all(full[:, :, BOX // 2] == 0)
    with pytest.raises(ValueError, match="r_max"):
        fs.project(spec, mats, BOX, r_max=BOX // 2 + 1)


def test_projection_with_shift_is_the_shifted_projection() -> None:
    n = 32
    blobs = Blobs(n, 1, seed=4)
    blobs.centres[:] = [[1.5, -1.0, 2.0]]  # near the centre: little gridding bias
    spec = fs.pad_volume_spectrum(blobs.volume())
    a = euler_to_matrix(40.0, 70.0, -25.0)
    plain = image_of(fs.project(spec, a, n)[0], n)
    for shift in ((3.0, -5.0), (1.3, 2.6)):
        moved = image_of(fs.project(spec, a, n, shifts=[shift])[0], n)
        # image(r) = projection(r - t); shift_image takes (dy, dx).
        np.testing.assert_allclose(
            moved, shift_image(plain, (shift[1], shift[0])), atol=1e-5 * plain.max()
        )
        # The blob lands at (A r)[:2] + t.
        yy, xx = np.mgrid[0:n, 0:n] - n // 2
        centroid = np.array([(xx * moved).sum(), (yy * moved).sum()]) / moved.sum()
        expected = (a @ blobs.centres[0])[:2] + np.asarray(shift)
        np.testing.assert_allclose(centroid, expected, atol=0.05)
    np.testing.assert_array_equal(
        image_of(fs.project(spec, a, n, shifts=[(3.0, -5.0)])[0], n),
        image_of(fs.project(spec, a, n, shifts=np.array([[3.0, -5.0]]))[0], n),
    )


# ----------------------------------------------------------------------- reconstruction


@pytest.fixture(scope="module")
def blob_data() -> dict[str, np.ndarray]:
    blobs = Blobs(N, 24, seed=0)
    rng = np.random.default_rng(1)
    mats = random_rotations(VIEWS, rng)
    shifts = rng.uniform(-3.0, 3.0, (VIEWS, 2))
    return {
        "volume": blobs.volume(),
        "matrices": mats,
        "shifts": shifts,
        "spectra": spectra_of(blobs.images(mats)),
        "shifted": spectra_of(blobs.images(mats, shifts)),
    }


@pytest.fixture(scope="module")
def plain_backprojector(blob_data: dict[str, np.ndarray]) -> fs.BackProjector:
    bp = fs.BackProjector.zeros(N)
    bp.insert(blob_data["spectra"], blob_data["matrices"], batch=500)
    return bp


def test_reconstruction_from_noiseless_projections(
    blob_data: dict[str, np.ndarray], plain_backprojector: fs.BackProjector
) -> None:
    truth = blob_data["volume"]
    volume = plain_backprojector.reconstruct(1e-6)
    assert volume.shape == (N, N, N) and volume.dtype == np.float32
    curve = fsc(volume, truth)
    assert np.all(curve[: int(0.8 * N / 2) + 1] > 0.95), np.round(curve, 3)
    assert ncc(volume, truth) > 0.98
    # Not only correlated: the right values (scale and offset).
    assert float((volume * truth).sum() / (truth * truth).sum()) == pytest.approx(1.0, abs=0.02)


def test_reconstruction_with_ctf_and_shifts(blob_data: dict[str, np.ndarray]) -> None:
    """Images C * shift(projection): numerator C X, weight C^2, shifts undone."""
    rng = np.random.default_rng(5)
    defocus = rng.uniform(8000.0, 25000.0, VIEWS)
    ctf = np.stack([ctf_2d((N, N), 3.0, d, d - 300.0, 30.0) for d in defocus])
    data = ctf * blob_data["shifted"]
    bp = fs.BackProjector.zeros(N)
    bp.insert(ctf * data, blob_data["matrices"], ctf**2, shifts=blob_data["shifts"], batch=700)
    volume = bp.reconstruct(1e-3)
    curve = fsc(volume, blob_data["volume"])
    assert np.all(curve[: int(0.7 * N / 2) + 1] > 0.9), np.round(curve, 3)
    assert ncc(volume, blob_data["volume"]) > 0.98
    # Without undoing the shifts the map is blurred: the test can tell.
    wrong = fs.BackProjector.zeros(N)
    wrong.insert(ctf * data, blob_data["matrices"], ctf**2)
    assert fsc(wrong.reconstruct(1e-3), blob_data["volume"])[8] < 0.5


def test_insertion_accumulates_and_is_batch_invariant(blob_data: dict[str, np.ndarray]) -> None:
    spectra, mats = blob_data["spectra"][:40], blob_data["matrices"][:40]
    weights = np.abs(np.cos(radius_map(N)))  # one (n, n//2+1) weight for all images
    once = fs.BackProjector.zeros(N)
    once.insert(spectra * weights, mats, weights, batch=64)
    twice = fs.BackProjector.zeros(N)
    twice.insert(spectra[:15] * weights, mats[:15], weights, batch=4)
    twice.insert(spectra[15:] * weights, mats[15:], np.broadcast_to(weights, (25, N, N // 2 + 1)))
    np.testing.assert_allclose(
        twice.numerator, once.numerator, atol=1e-9 * abs(once.numerator).max()
    )
    np.testing.assert_allclose(twice.weight, once.weight, atol=1e-9 * once.weight.max())


def test_total_inserted_weight_is_the_number_of_plane_points() -> None:
    """Each full-plane frequency (within r_max, without Nyquist) carries weight 1, its
    trilinear splat sums to 1, and the kx = 0 column is not counted twice."""
    n = 16
    mats = random_rotations(5, np.random.default_rng(6))
    bp = fs.BackProjector.zeros(n)
    bp.insert(np.zeros((5, n, n // 2 + 1), dtype=np.complex64), mats, r_max=5)
    k = np.fft.fftfreq(n) * n
    ky, kx = np.meshgrid(k, k, indexing="ij")
    points = int((np.sqrt(kx**2 + ky**2) < 5.5).sum())  # the full plane, no Nyquist here
    # The half grid holds half of the full grid's total: the other half are the mates
    # of its interior, and the Hermitian completion doubles its planes qx = 0 and P/2.
    assert 2 * bp.weight.sum() == pytest.approx(5 * points, rel=1e-6)
    assert bp.numerator.sum() == 0


def reference_reconstruction(
    full_x: np.ndarray, full_w: np.ndarray, mats: np.ndarray, reg: float, pad: int
) -> np.ndarray:
    """A plain full-grid reconstruction from full (m, n, n) image spectra (fft2) and
    weights: every frequency of the image plane (Nyquist row and column excepted) is
    splatted with np.add.at into a full (P, P, P) grid, then divided, inverted, cropped
    and gridding-corrected."""
    n = full_x.shape[-1]
    size = pad * n
    k = np.fft.fftfreq(n) * n
    ky, kx = np.meshgrid(k, k, indexing="ij")
    keep = (np.sqrt(kx**2 + ky**2) < n // 2 + 0.5) & (kx > -n // 2) & (ky > -n // 2)
    num = np.zeros((size,) * 3, dtype=np.complex128)
    den = np.zeros((size,) * 3)
    for a, x, w in zip(mats, full_x, full_w, strict=True):
        g = pad * (kx[keep, None] * a[0] + ky[keep, None] * a[1])  # (F, 3): (x, y, z)
        lower = np.floor(g)
        frac = g - lower
        for corner in np.ndindex(2, 2, 2):  # (dx, dy, dz)
            c = lower.astype(int) + np.array(corner)
            t = np.prod(np.where(np.array(corner, dtype=bool), frac, 1 - frac), axis=1)
            at = (c[:, 2] % size, c[:, 1] % size, c[:, 0] % size)
            np.add.at(num, at, t * x[keep])
            np.add.at(den, at, t * w[keep])
    vol_full = np.fft.ifftn(num / (den + reg / pad**3))
    assert np.abs(vol_full.imag).max() < 1e-6 * np.abs(vol_full.real).max()
    idx = (np.arange(n) - n // 2) % size
    s = np.sinc((np.arange(n) - n // 2) / size) ** 2
    grid = s[:, None, None] * s[None, :, None] * s[None, None, :]
    return vol_full.real[np.ix_(idx, idx, idx)] / grid


@pytest.mark.parametrize("pad", [1, 2])
def test_reconstruction_matches_a_full_grid_reference(pad: int) -> None:
    """Few views, so that every voxel's samples matter: the half grid with its Friedel
    bookkeeping equals the plain full-grid computation."""
    n, m = 16, 3
    rng = np.random.default_rng(10)
    images = rng.standard_normal((m, n, n))
    mats = random_rotations(m, rng)
    mats[0] = euler_to_matrix(0.0, 90.0, 30.0)  # a section in the plane qx = 0
    params = [(4.0, 9000.0 + 3000.0 * i, 8000.0, 20.0 * i) for i in range(m)]
    ctf = np.stack([ctf_2d((n, n), *p) for p in params])
    ctf_full = np.stack([ctf_2d((n, n), *p, rfft=False) for p in params])
    volume = fs.BackProjector.zeros(n, pad=pad)
    volume.insert(ctf * np.fft.rfft2(images), mats, ctf**2, batch=2)
    ours = volume.reconstruct(0.05)
    expected = reference_reconstruction(
        ctf_full * np.fft.fft2(images), ctf_full**2, mats, 0.05, pad
    )
    np.testing.assert_allclose(ours, expected, atol=1e-5 * np.abs(expected).max())


def test_regulariser_per_shell(plain_backprojector: fs.BackProjector) -> None:
    reg = np.full(N // 2 + 1, 1e-6)
    reg[9:] = 1e9  # no signal beyond shell 8: those shells go to zero
    volume = plain_backprojector.reconstruct(reg)
    power = np.abs(np.fft.rfftn(volume)) ** 2
    k = np.fft.fftfreq(N) * N
    shells = np.rint(
        np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(N // 2 + 1) ** 2)
    )
    assert power[shells >= 11].sum() < 1e-3 * power[shells <= 6].sum()
    reference = plain_backprojector.reconstruct(1e-6)
    assert fsc(volume, reference)[:7].min() > 0.99
    # The regulariser is per voxel of the n grid: uniform views put a data weight of
    # about m / (2 s) on an n-grid voxel of shell s (m central sections of area 2 pi s ds
    # in a shell of volume 4 pi s^2 ds), so regularising with that weight halves every
    # shell (Wiener filter at SSNR 1).
    shell = np.arange(N // 2 + 1)
    halved = plain_backprojector.reconstruct(VIEWS / (2.0 * np.maximum(shell, 1)))
    f_half, f_ref = np.fft.rfftn(halved), np.fft.rfftn(reference)
    keep = shells <= N // 2
    index = shells[keep].astype(int)
    gain = np.bincount(index, (f_half * np.conj(f_ref)).real[keep]) / np.bincount(
        index, (np.abs(f_ref) ** 2)[keep]
    )
    np.testing.assert_allclose(gain[2:15], 0.5, atol=0.05)
    with pytest.raises(ValueError, match="regulariser"):
        plain_backprojector.reconstruct(np.ones(5))


# --------------------------------------------------------------------------- FSC


def test_fsc_of_a_volume_with_itself_and_with_noise() -> None:
    rng = np.random.default_rng(7)
    vol = Blobs(N, 10, seed=8).volume() + 0.01 * rng.standard_normal((N, N, N))
    curve = fsc(vol, vol)
    assert curve.shape == (N // 2 + 1,)
    np.testing.assert_allclose(curve, 1.0, atol=1e-9)
    np.testing.assert_allclose(fsc(vol, -3.0 * vol), -1.0, atol=1e-9)
    noise = fsc(rng.standard_normal((N, N, N)), rng.standard_normal((N, N, N)))
    assert abs(noise[5:].mean()) < 0.1
    assert np.all(np.abs(noise[5:]) < 0.25)


def test_fsc_matches_a_full_spectrum_computation() -> None:
    rng = np.random.default_rng(9)
    n = 16
    a = rng.standard_normal((n, n, n))
    b = a + rng.standard_normal((n, n, n))
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    k = np.fft.fftfreq(n) * n
    shells = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None] ** 2))
    expected = []
    for s in range(n // 2 + 1):
        sel = shells == s
        num = (fa[sel] * np.conj(fb[sel])).real.sum()
        expected.append(num / np.sqrt((np.abs(fa[sel]) ** 2).sum() * (np.abs(fb[sel]) ** 2).sum()))
    np.testing.assert_allclose(fsc(a, b), expected, atol=1e-12)


def test_shell_resolution_and_frequencies() -> None:
    n, px = 64, 1.5
    freqs = shell_frequencies(n, px)
    assert len(freqs) == n // 2 + 1
    assert freqs[0] == 0 and freqs[-1] == pytest.approx(1 / (2 * px))
    curve = np.ones(n // 2 + 1)
    curve[11:16] = [0.8, 0.6, 0.4, 0.2, 0.0]
    curve[16:] = 0.0
    # 0.143 is crossed between shell 14 (0.2) and 15 (0.0), at 14 + 0.057 / 0.2.
    shell = 14 + (0.2 - 0.143) / 0.2
    assert shell_resolution(curve, px) == pytest.approx(n * px / shell)
    assert shell_resolution(curve, px, threshold=0.5) == pytest.approx(n * px / 12.5)
    assert 1.0 / shell_resolution(curve, px) == pytest.approx(
        np.interp(shell, np.arange(n // 2 + 1), freqs)
    )
    dip = curve.copy()
    dip[1] = 0.0  # shell 1 is not searched
    assert shell_resolution(dip, px) == pytest.approx(n * px / shell)
    assert shell_resolution(np.ones(n // 2 + 1), px) == pytest.approx(2 * px)


def test_fsc_at_resolution_reads_the_curve_where_shell_resolution_does() -> None:
    px, n = 2.0, 64
    shells = np.arange(n // 2 + 1)
    curve = 1.0 / (1.0 + (shells / 12.0) ** 4)  # smooth and falling; 0.5 at shell 12
    assert fsc_at_resolution(curve, px, n * px / 12.0) == pytest.approx(0.5)
    # Between shells: linear; the inverse of shell_resolution's reading.
    assert fsc_at_resolution(curve, px, n * px / 12.5) == pytest.approx(
        0.5 * (curve[12] + curve[13])
    )
    for threshold in (0.9, 0.5, 0.143):
        at = shell_resolution(curve, px, threshold)
        assert fsc_at_resolution(curve, px, at) == pytest.approx(threshold, abs=1e-9)
    assert fsc_at_resolution(curve, px, 2 * px) == pytest.approx(curve[-1])
    with pytest.raises(ValueError, match="outside the curve"):
        fsc_at_resolution(curve, px, 1.5 * px)


def _plane_points(n: int, r_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ky = np.fft.fftfreq(n) * n
    kx = np.arange(n // 2 + 1, dtype=np.float64)
    fy, fx = np.meshgrid(ky, kx, indexing="ij")
    keep = (np.hypot(fx, fy) < r_max + 0.5) & (fx < n // 2) & (fy > -(n // 2))
    flat = np.flatnonzero(keep.ravel())
    return flat, fx.ravel()[flat], fy.ravel()[flat]


@pytest.mark.parametrize("r_max", [5, 13, BOX // 2])
def test_projector_cube_samples_what_project_reads(phantom_volume: np.ndarray, r_max: int) -> None:
    spec = fs.pad_volume_spectrum(phantom_volume)
    mats = random_rotations(40, np.random.default_rng(3))
    reference = np.asarray(fs.project(spec, mats, BOX, r_max)).reshape(40, -1)
    flat, kx, ky = _plane_points(BOX, r_max)
    projector = fs.Projector.from_spectrum(spec, BOX, r_max)
    for batch in (7, 128):
        got = projector.sample(mats, kx, ky, batch=batch)
        assert got.shape == (40, len(flat)) and got.dtype == np.complex64
        scale = float(np.abs(reference).max())
        np.testing.assert_allclose(got, reference[:, flat], atol=2e-5 * scale)
    # Built from the volume directly: the same cube; a smaller cube below r_max.
    again = fs.Projector.from_volume(phantom_volume, r_max)
    np.testing.assert_array_equal(again.cube, projector.cube)
    if r_max < BOX // 2:
        assert projector.cube.size < spec.size
    with pytest.raises(ValueError, match="r_max"):
        projector.sample(mats, np.array([r_max + 2.0]), np.array([0.0]))


def test_input_validation(phantom_volume: np.ndarray) -> None:
    with pytest.raises(ValueError, match="even box"):
        fs.pad_volume_spectrum(np.zeros((5, 5, 5), dtype=np.float32))
    spec = fs.pad_volume_spectrum(phantom_volume)
    with pytest.raises(ValueError, match="padded half grid"):
        fs.project(spec, np.eye(3), 48)
    bp = fs.BackProjector.zeros(16)
    with pytest.raises(ValueError, match="rotations"):
        bp.insert(np.zeros((3, 16, 9), dtype=np.complex64), np.stack([np.eye(3)] * 2))
    with pytest.raises(ValueError, match="shift"):
        bp.insert(np.zeros((2, 16, 9), dtype=np.complex64), [np.eye(3)] * 2, shifts=[(0, 0)])


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
def test_gpu_matches_cpu(blob_data: dict[str, np.ndarray]) -> None:
    import cupy as cp

    volume = blob_data["volume"]
    mats = blob_data["matrices"][:400]
    shifts = blob_data["shifts"][:400]
    spec_cpu = fs.pad_volume_spectrum(volume)
    spec_gpu = fs.pad_volume_spectrum(cp.asarray(volume))
    assert isinstance(spec_gpu, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(spec_gpu), spec_cpu, atol=1e-4 * abs(spec_cpu).max())
    p_cpu = fs.project(spec_cpu, mats, N, shifts=shifts, batch=64)
    p_gpu = fs.project(spec_gpu, mats, N, shifts=shifts, batch=64)
    _, kx, ky = _plane_points(N, N // 2)
    cube_gpu = fs.Projector.from_spectrum(spec_gpu, N).sample(mats, kx, ky, batch=64)
    assert isinstance(cube_gpu, cp.ndarray)
    cube_cpu = fs.Projector.from_spectrum(spec_cpu, N).sample(mats, kx, ky)
    np.testing.assert_allclose(cp.asnumpy(cube_gpu), cube_cpu, atol=1e-4 * abs(cube_cpu).max())
    np.testing.assert_allclose(cp.asnumpy(p_gpu), p_cpu, atol=1e-4 * abs(p_cpu).max())
    weights = np.abs(np.cos(radius_map(N))).astype(np.float32)
    bp_cpu = fs.BackProjector.zeros(N)
    bp_cpu.insert(p_cpu * weights, mats, weights, shifts=shifts, batch=64)
    bp_gpu = fs.BackProjector.zeros(N, xp=cp)
    bp_gpu.insert(p_gpu * cp.asarray(weights), mats, cp.asarray(weights), shifts=shifts)
    np.testing.assert_allclose(
        cp.asnumpy(bp_gpu.weight), bp_cpu.weight, atol=1e-5 * bp_cpu.weight.max()
    )
    np.testing.assert_allclose(
        cp.asnumpy(bp_gpu.numerator), bp_cpu.numerator, atol=1e-5 * abs(bp_cpu.numerator).max()
    )
    vol_cpu = bp_cpu.reconstruct(1e-3)
    vol_gpu = bp_gpu.reconstruct(cp.full(N // 2 + 1, 1e-3))
    assert isinstance(vol_gpu, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(vol_gpu), vol_cpu, atol=1e-4 * abs(vol_cpu).max())
    np.testing.assert_allclose(fsc(vol_gpu, cp.asarray(volume)), fsc(vol_cpu, volume), atol=1e-5)
