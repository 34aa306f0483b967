"""CTF estimation (ops.ctf_fit) against the simulator's defocus, astigmatism and angle.

Micrographs are the simulator's noiseless demo micrographs (1024 x 1024, 1.5 Å/px,
300 kV) with Poisson counting noise at 30 e/Å², defocus 0.5-4 µm, astigmatism
0-1500 Å: the conditions of the acceptance figures of issue 3.
"""

from __future__ import annotations

import numpy as np
import pytest

from cryosnake.ops.ctf_fit import amplitude_spectrum, fit_ctf
from cryosnake.simulate import load_specimen, make_detector, make_params, simulate_movie


def micrographs(count: int, seed: int, phase_shift: float = 0.0):
    params = make_params(
        "demo", n_movies=1, defocus_min=5000, defocus_max=40000, phase_shift=phase_shift
    )
    specimen, _ = load_specimen(params)
    detector = make_detector(params, np.random.default_rng(seed))
    for i in range(count):
        truth, _ = simulate_movie(
            params, 0, specimen, detector, np.random.default_rng(seed + 1 + i), noise=False
        )
        counts = np.random.default_rng(seed + 1000 + i).poisson(np.maximum(truth.noiseless, 0))
        yield truth, counts.astype(np.float32), params.pixel_size


def errors(truth, fit) -> tuple[float, float, float, float]:
    mean_true = 0.5 * (truth.defocus_u + truth.defocus_v)
    mean_fit = 0.5 * (fit.defocus_u + fit.defocus_v)
    astig_true = truth.defocus_u - truth.defocus_v
    astig_fit = fit.defocus_u - fit.defocus_v
    angle = (fit.angle - truth.defocus_angle + 90.0) % 180.0 - 90.0
    return (
        abs(mean_fit - mean_true) / mean_true,
        abs(astig_fit - astig_true),
        abs(angle),
        astig_true,
    )


def check(count: int, seed: int) -> None:
    passed = 0
    for truth, image, px in micrographs(count, seed):
        fit = fit_ctf(image, px)
        assert fit.defocus_u >= fit.defocus_v and 0 <= fit.angle < 180
        rel, astig, angle, astig_true = errors(truth, fit)
        ok = rel <= 0.01 and astig <= 100 and (astig_true < 300 or angle <= 5)
        passed += ok
        assert fit.figure_of_merit > 0.3 and fit.max_resolution < 10
    assert passed >= 0.95 * count


def test_defocus_astigmatism_and_angle_within_tolerance() -> None:
    check(6, seed=40)


@pytest.mark.slow
def test_twenty_micrographs_within_tolerance() -> None:
    check(20, seed=80)


def test_phase_shift_is_fitted_with_the_defocus() -> None:
    for truth, image, px in micrographs(2, seed=60, phase_shift=70.0):
        fit = fit_ctf(image, px, fit_phase_shift=True)
        rel, astig, angle, astig_true = errors(truth, fit)
        assert rel <= 0.01 and astig <= 100 and (astig_true < 300 or angle <= 5)
        assert abs((fit.phase_shift - 70.0 + 180.0) % 360.0 - 180.0) <= 6.0


def test_pure_noise_gets_a_low_figure_of_merit() -> None:
    noise = np.random.default_rng(5).poisson(60.0, size=(1024, 1024)).astype(np.float32)
    fit = fit_ctf(noise, 1.5)
    assert fit.figure_of_merit < 0.1


def test_amplitude_spectrum_of_a_sinusoid_peaks_at_its_frequency() -> None:
    y, x = np.mgrid[0:512, 0:512]
    image = np.cos(2 * np.pi * (x * 40 / 256 + y * 10 / 256))
    amp = amplitude_spectrum(image, tile=256)
    peak = np.unravel_index(np.argmax(amp), amp.shape)
    assert {tuple(np.subtract(peak, 128))} <= {(10, 40), (-10, -40)}


def test_band_must_be_sensible() -> None:
    with pytest.raises(ValueError, match="min_res"):
        fit_ctf(np.zeros((256, 256), np.float32), 1.0, min_res=4.0, max_res=5.0)
