"""What any reference-free picker could at best do on a foreign set: an ideal observer.

The detector knows what no picker is told: the generator's exact noise power spectrum
(``foreign_sim``: ``(1 + 2 exp(-(50 s)^2)) sinc^2(s p)``; ASPIRE: white), the true CTF
(the generator's own CTF function and envelope), the particle's rotationally
averaged projection (the mean of the generator's 12 noiseless template views, averaged
over rings), where the particles are and where the junk is. Its score map is the
matched filter of that isotropic template in the known noise, high-passed below
1 / diameter (ice and film, not particles, live there):

    score(x) = IFFT[ F(s) conj(CTF(s) T(s)) / N(s) ] / sqrt(sum |CTF T|^2 / N)

At low SNR the likelihood ratio of a particle of unknown orientation against noise is,
to first order, this correlation with the orientation-averaged projection, so no
picker that does not know the views detects better. The observer is also given perfect
localisation and junk rejection: a particle's score is the map's maximum within 0.2
diameter of its true centre (where a pick counts as found); false picks are the maxima,
0.8 diameter apart, of the map farther than 0.6 diameter from every particle, a radius
from the edge, the truth's contamination items and carbon film. The threshold is the
one, chosen with the truth, that maximises the smaller of precision and recall over all
micrographs of a condition: where the observer cannot reach P and R of 0.9 together,
no reference-free picker can on that data.
"""

from __future__ import annotations

import numpy as np
from foreign_sim import ForeignMicrograph, ctf_transfer, noise_power_spectrum
from scipy import fft, ndimage

__all__ = ["bound"]


def _isotropic(templates: np.ndarray) -> np.ndarray:
    """Rotational average of the mean template (centre ``b // 2``)."""
    mean = templates.mean(axis=0).astype(np.float64)
    b = mean.shape[-1]
    yy, xx = np.mgrid[0:b, 0:b] - b // 2
    radius = np.hypot(yy, xx)
    rings = np.round(radius).astype(int)
    profile = ndimage.mean(mean, labels=rings, index=np.arange(rings.max() + 1))
    return np.interp(radius, np.arange(len(profile)), profile)


def _score_map(m: ForeignMicrograph) -> np.ndarray:
    """The ideal isotropic matched filter's output on micrograph ``m`` (z-like units)."""
    ny, nx = m.image.shape
    image = m.image.astype(np.float64) - float(m.image.mean())
    template = _isotropic(m.templates)
    b = template.shape[-1]
    canvas = np.zeros((ny, nx))
    canvas[:b, :b] = template
    canvas = np.roll(canvas, (-(b // 2), -(b // 2)), axis=(0, 1))
    sy = fft.fftfreq(ny, m.pixel_size)[:, None]
    sx = fft.rfftfreq(nx, m.pixel_size)[None, :]
    s = np.hypot(sx, sy)
    power = noise_power_spectrum(s, m.pixel_size) if m.generator == "foreign" else 1.0
    ctf = ctf_transfer((ny, nx), m.pixel_size, m)
    t = fft.rfft2(canvas) * ctf * (1.0 - np.exp(-((s * m.diameter) ** 2)))
    out = fft.irfft2(fft.rfft2(image) * np.conj(t) / power, s=(ny, nx))
    return out / float(np.sqrt(np.sum(np.abs(t) ** 2 / power)))


def _allowed(m: ForeignMicrograph, shape: tuple[int, int]) -> np.ndarray:
    """Pixels a radius from the edge and from the truth's contamination and film."""
    border = 0.5 * m.diameter / m.pixel_size
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    allowed = (yy >= border) & (yy < ny - border) & (xx >= border) & (xx < nx - border)
    if m.carbon.any():
        allowed &= ndimage.distance_transform_edt(~m.carbon) > border
    for x, y, radius in m.junk:
        allowed &= np.hypot(xx - x, yy - y) > radius + border
    return allowed


def _scores(m: ForeignMicrograph) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the particles (the map's maximum within 0.2 diameter of each true
    centre) and of the noise (maxima, 0.8 diameter apart, of the allowed pixels farther
    than 0.6 diameter from every true centre)."""
    score = _score_map(m)
    d_px = m.diameter / m.pixel_size
    ny, nx = score.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    particles = []
    near = np.zeros((ny, nx), dtype=bool)
    for x, y in m.coordinates:
        distance = np.hypot(xx - x, yy - y)
        particles.append(float(score[distance <= 0.2 * d_px].max()))
        near |= distance <= 0.6 * d_px
    background = np.where(_allowed(m, (ny, nx)) & ~near, score, -np.inf)
    peaks = background == ndimage.maximum_filter(background, size=int(1.6 * d_px) | 1)
    noise = background[peaks & np.isfinite(background)]
    return np.asarray(particles), noise


def bound(micrographs: list[ForeignMicrograph]) -> dict[str, float]:
    """Precision, recall and F1 of the ideal isotropic detector over all
    ``micrographs`` at the threshold that maximises the smaller of precision and recall
    (where both can reach 0.9, they do there): recall counts the particles whose score
    exceeds it, false picks the noise maxima that do."""
    found = [_scores(m) for m in micrographs]
    particles = np.concatenate([p for p, _ in found])
    noise = np.concatenate([n for _, n in found])
    total = len(particles)
    thresholds = np.sort(np.concatenate([particles, noise]))[::-1]
    tp = np.searchsorted(-np.sort(particles)[::-1], -thresholds, side="right")
    fp = np.searchsorted(-np.sort(noise)[::-1], -thresholds, side="right")
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(total, 1)
    best = int(np.argmax(np.minimum(precision, recall)))
    return {
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "f1": float(2 * tp[best] / max(tp[best] + fp[best] + total, 1)),  # 2PR / (P + R)
        "threshold": float(thresholds[best]),
        "particles": total,
        "picks": int(tp[best] + fp[best]),
    }
