"""The peer programs of issue 3, called on NumPy inputs, answering in cryosnake's conventions.

Each wrapper returns the peer's wall time (seconds, measured around the peer's own calls,
input conversion included) and its estimate in our conventions (ARCHITECTURE.md,
"Interfaces that must hold"):

* shifts: ``(n, 2)`` per-frame ``(x, y)`` in movie pixels, x = column, with
  ``frame_i(r) ~ reference(r - shift_i)``, frame 0 at zero;
* CTF: ``defocus_u >= defocus_v`` in Å (underfocus positive) and ``angle_deg``, the
  angle of the U axis from the image x axis (columns), counter-clockwise, in
  ``[0, 180)``.

The peers are optional: they live in ``.venv-bench`` (``make bench-env``, pinned in
``benchmarks/requirements-peers.txt``), not in cryosnake's dependencies. Every import
happens inside the wrappers, so this module imports without them.

Conventions, as measured against the simulator's truth (demo preset movie, seed 3;
the 20 CTF micrographs of ``bench_ctf_peers.py``, seed 80):

* torch-motion-correction: a ``DeformationField`` holds ``(y, x)`` shifts in Å in
  that order along its first axis, with the same sign as ours (its cross-correlation
  peak of ``conj(reference) * frame`` sits at the frame's displacement). Ours:
  ``shift = field[::-1] / pixel_size - (same at frame 0)``. Measured on the demo movie
  (11 px of drift): RMS error 0.34 px against truth with this mapping, 5.7 px with
  the sign flipped, 4.2 px with x and y swapped, 3.8 px with both.
* ASPIRE ``estimate_ctf``: ``defocus_u``/``defocus_v`` in Å (principal defoci, not
  necessarily ordered) and ``defocus_ang`` in radians, measured from the image's y
  axis towards x: ours = ``90° - degrees(defocus_ang)`` (mod 180). Measured: median
  angle error 0.8° on the 17 micrographs with astigmatism >= 300 Å, against >= 29°
  for ``a``, ``-a`` or ``90 + a``. Where its U < V the wrapper swaps them and adds
  90° (did not occur in those runs).
* torch-ctf-estimation (0.6.0): defocus in µm. Its CTF model (torch-ctf's
  ``apply_astigmatism_to_defocus``) is ``defocus(phi) = mean + A cos(2 (phi - angle))``
  with ``A = astigmatism``, so the principal defoci are ``mean ± A`` and
  ``dfU - dfV = 2 A``; its ``Defocus2DResults.defocus_u/v`` fields, though, are
  ``mean ± A / 2``, half the astigmatism of its own fit. The wrapper reports the
  model's ``mean ± A``: on the 20 micrographs of ``bench_ctf_peers.py`` its U - V then
  matches the truth (median error 16 Å), while the ``defocus_u/v`` fields are off by
  about half the astigmatism (median error 526 Å); ``raw`` keeps its fields. Its
  ``astigmatism_angle`` (degrees, ``[-90, 90]``) is measured from x towards y: ours =
  its angle (mod 180), median error 0.6° on the 17 micrographs with astigmatism
  >= 300 Å, against >= 28° for ``-a``, ``90 - a`` or ``90 + a``. A negative A (U < V)
  is swapped, angle + 90°.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PEERS = ("torch", "torch-motion-correction", "torch-ctf-estimation", "torchvision", "aspire")


def peer_versions() -> dict[str, str | None]:
    """Installed version of each peer package (``None`` where it is missing)."""
    versions: dict[str, str | None] = {}
    for name in PEERS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _ctf_result(
    seconds: float, du: float, dv: float, angle: float, raw: dict[str, float]
) -> dict[str, Any]:
    """Order U >= V (turning the angle by 90° where they swap), angle into [0, 180).

    ``raw`` keeps the peer's own numbers, unconverted, for checking the mapping.
    """
    if du < dv:
        du, dv, angle = dv, du, angle + 90.0
    return {
        "seconds": seconds,
        "defocus_u": float(du),
        "defocus_v": float(dv),
        "angle_deg": float(angle % 180.0),
        "raw": raw,
    }


# --- torch-motion-correction ---------------------------------------------------------


def _replace_hot_pixels(frames: np.ndarray, threshold_sd: float = 10.0) -> np.ndarray:
    """Pixels more than ``threshold_sd`` SD from their frame's mean -> mean of 8 neighbours.

    The peer has no defect handling; its example script (``examples/ttMotion.py`` in
    teamtomo/torch-motion-correction) removes such pixels (there: replaced by a random
    neighbour) before estimating motion. Without it, on the demo movie, the
    whole-image cross-correlation found zero shift for all frames but one: hot pixels
    do not move with the specimen.
    """
    out = frames.copy()
    n, ny, nx = frames.shape
    for i in range(n):
        frame = frames[i]
        mean, sd = float(frame.mean()), float(frame.std())
        ys, xs = np.nonzero(np.abs(frame - mean) > threshold_sd * sd)
        if len(ys) == 0:
            continue
        total = np.zeros(len(ys), np.float64)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    total += frame[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)]
        out[i, ys, xs] = total / 8.0
    return out


def torch_motion_correction(
    frames: np.ndarray,
    pixel_size: float,
    *,
    patch: int = 1024,
    grid: int = 3,
) -> tuple[float, np.ndarray]:
    """Global drift of a movie by torch-motion-correction, on the CPU.

    Parameters
    ----------
    frames : (n, ny, nx) float32, gain-corrected
    pixel_size : Å per pixel
    patch : patch side of the local refinement, px (capped at half the frame)
    grid : spatial control points per side of the deformation field

    The peer's pipeline as its example script runs it: hot pixels replaced (see
    ``_replace_hot_pixels``), whole-image cross-correlation against the middle frame
    (``estimate_global_motion``, integer-pixel peaks), then the spline deformation
    field (``estimate_local_motion``: ``n`` time points x ``grid`` x ``grid``, square
    patches with 50 % overlap, the package's default filter — B 500 Å², 300-10 Å — and
    optimiser — Adam, 100 iterations, MSE) started from the global field. The global
    estimate returned is the field averaged over a 5 x 5 lattice of image positions
    at each frame's time; its local part is not compared.

    Returns
    -------
    seconds, shifts : wall time of the peer (hot-pixel step included) and (n, 2)
        per-frame (x, y) shifts in pixels, frame 0 at zero, our sign convention
        (``frame_i(r) ~ reference(r - shift_i)``), see the module docstring.
    """
    os.environ.setdefault("TQDM_DISABLE", "1")  # the optimiser's progress bar
    import torch
    from torch_motion_correction import (
        PatchSamplingConfig,
        estimate_global_motion,
        estimate_local_motion,
    )

    n, ny, nx = frames.shape
    side = min(patch, min(ny, nx) // 2)
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    image = torch.from_numpy(
        np.ascontiguousarray(_replace_hot_pixels(np.asarray(frames, np.float32)))
    )
    initial = estimate_global_motion(image, pixel_size, device=cpu)
    field, _ = estimate_local_motion(
        image,
        pixel_size,
        deformation_field_resolution=(n, grid, grid),
        patch_sampling=PatchSamplingConfig(patch_shape=(side, side)),
        initial_deformation_field=initial,
        device=cpu,
    )
    t = torch.linspace(0.0, 1.0, n)
    lattice = torch.linspace(0.0, 1.0, 5)
    yy, xx = torch.meshgrid(lattice, lattice, indexing="ij")
    tyx = torch.stack(
        [
            t[:, None].expand(n, 25),
            yy.reshape(1, 25).expand(n, 25),
            xx.reshape(1, 25).expand(n, 25),
        ],
        dim=-1,
    )
    with torch.no_grad():
        yx = field(tyx).mean(dim=1).cpu().numpy().astype(np.float64)  # (n, 2) Å, (y, x)
    seconds = time.perf_counter() - t0
    shifts = yx[:, ::-1] / pixel_size
    return seconds, shifts - shifts[0]


# --- ASPIRE ----------------------------------------------------------------------------


def aspire_ctf_batch(
    micrographs: Sequence[np.ndarray],
    pixel_size: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
) -> tuple[float, list[dict[str, Any]]]:
    """ASPIRE's ``estimate_ctf`` on a folder of micrographs, as its API is meant to run.

    Writes the micrographs as MRC files into a temporary folder (not timed) and calls
    ``aspire.ctf.estimate_ctf`` once on it with its default parameters (psd_size 512,
    2 tapers, fit band 30-5 Å, 1D defocus scan 500-10000 nm, which covers 0.5-4 µm).
    The one-time set-up (a Fourier-Bessel basis of the PSD size) is shared by all
    micrographs, as in ASPIRE's own use.

    Returns the total wall time of the call and one result per micrograph, in input
    order, each with ``seconds`` = total / count (see ``_ctf_result`` and the module
    docstring for the conventions).
    """
    import mrcfile
    from aspire.ctf import estimate_ctf

    with tempfile.TemporaryDirectory(prefix="aspire_ctf_") as tmp:
        folder = Path(tmp) / "micrographs"
        folder.mkdir()
        names = []
        for i, image in enumerate(micrographs):
            name = f"micrograph_{i:04d}.mrc"
            with mrcfile.new(folder / name) as mrc:
                mrc.set_data(np.asarray(image, np.float32))
                mrc.voxel_size = pixel_size
            names.append(name)
        t0 = time.perf_counter()
        results = estimate_ctf(
            str(folder),
            pixel_size=pixel_size,
            cs=cs_mm,
            amplitude_contrast=amplitude_contrast,
            voltage=voltage_kv,
            output_dir=str(Path(tmp) / "out"),
        )
        seconds = time.perf_counter() - t0
    each = seconds / max(len(names), 1)
    out = []
    for name in names:
        r = results[name]
        du, dv, rad = float(r["defocus_u"]), float(r["defocus_v"]), float(r["defocus_ang"])
        raw = {"defocus_u": du, "defocus_v": dv, "defocus_ang": rad}
        out.append(_ctf_result(each, du, dv, 90.0 - math.degrees(rad), raw))
    return seconds, out


def aspire_ctf(
    micrograph: np.ndarray,
    pixel_size: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
) -> dict[str, Any]:
    """ASPIRE's ``estimate_ctf`` on one micrograph (its one-time set-up included).

    Returns ``seconds``, ``defocus_u``, ``defocus_v`` (Å, U >= V) and ``angle_deg``
    (our convention, see the module docstring).
    """
    _, results = aspire_ctf_batch([micrograph], pixel_size, voltage_kv, cs_mm, amplitude_contrast)
    return results[0]


# --- torch-ctf-estimation ----------------------------------------------------------


def _ensure_gaussian_blur() -> None:
    """Make ``torchvision.transforms.functional.gaussian_blur`` importable.

    torch-ctf-estimation uses torchvision for this one function. The torchvision
    wheels on PyPI are built against CUDA torch; with the CPU build of torch that the
    benchmark environment installs, ``import torchvision`` fails ("operator
    torchvision::nms does not exist": its compiled extension needs libtorch_cuda).
    ``gaussian_blur`` itself is pure PyTorch: this loads torchvision's own
    ``transforms/_functional_tensor.py`` from the installed package (it imports only
    torch) and exposes it under ``torchvision.transforms.functional``, so the peer runs
    torchvision's code unchanged. Nothing is done where torchvision imports.
    """
    try:
        import torchvision.transforms.functional  # noqa: F401

        return
    except (ImportError, OSError, RuntimeError):
        pass
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torch-ctf-estimation needs torchvision, which is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / "transforms"
    source = source / "_functional_tensor.py"
    loader_spec = importlib.util.spec_from_file_location("_torchvision_functional_tensor", source)
    assert loader_spec is not None and loader_spec.loader is not None
    tensor_ops = importlib.util.module_from_spec(loader_spec)
    loader_spec.loader.exec_module(tensor_ops)

    def gaussian_blur(img: Any, kernel_size: Any, sigma: Any = None) -> Any:
        # The argument handling of torchvision.transforms.functional.gaussian_blur.
        ks = [kernel_size, kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
        if sigma is None:
            sigma = [k * 0.15 + 0.35 for k in ks]
        sg = [float(sigma)] * 2 if isinstance(sigma, int | float) else [float(s) for s in sigma]
        if len(sg) == 1:
            sg = sg * 2
        return tensor_ops.gaussian_blur(img, ks, sg)

    package = types.ModuleType("torchvision")
    package.__path__ = []
    transforms = types.ModuleType("torchvision.transforms")
    transforms.__path__ = []
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.gaussian_blur = gaussian_blur  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    package.transforms = transforms  # type: ignore[attr-defined]
    sys.modules.update(
        {
            "torchvision": package,
            "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional,
        }
    )


def torch_ctf(
    micrograph: np.ndarray,
    pixel_size: float,
    voltage_kv: float,
    cs_mm: float,
    amplitude_contrast: float,
) -> dict[str, Any]:
    """torch-ctf-estimation's ``estimate_ctf`` on one micrograph, on the CPU.

    Parameters as its README's usage example: ``OpticalParams`` with its defaults
    (internal fitting pixel 3 Å), ``CTFFittingParams(defocus_grid_resolution=(1, 3, 3),
    frequency_fit_range_angstroms=(30, 5), defocus_range_microns=(0.5, 5),
    patch_sidelength=128)``, everything else default. The defocus reported is the
    2D fit's: U, V = mean of its defocus grid ± its fitted ``astigmatism`` (see the
    module docstring on why not its ``defocus_u``/``defocus_v`` fields).

    Returns ``seconds``, ``defocus_u``, ``defocus_v`` (Å, U >= V) and ``angle_deg``
    (our convention, see the module docstring).
    """
    _ensure_gaussian_blur()
    import torch
    from torch_ctf_estimation import estimate_ctf
    from torch_ctf_estimation.models import CTFFittingParams, OpticalParams

    optical = OpticalParams(
        pixel_spacing_angstroms=pixel_size,
        voltage_kev=voltage_kv,
        spherical_aberration_mm=cs_mm,
        amplitude_contrast_fraction=amplitude_contrast,
    )
    fitting = CTFFittingParams(
        defocus_grid_resolution=(1, 3, 3),
        frequency_fit_range_angstroms=(30.0, 5.0),
        defocus_range_microns=(0.5, 5.0),
        patch_sidelength=128,
    )
    t0 = time.perf_counter()
    image = torch.from_numpy(np.ascontiguousarray(micrograph, dtype=np.float32))
    _, _, result2d = estimate_ctf(image, optical, fitting)
    seconds = time.perf_counter() - t0
    assert result2d.defocus_u is not None and result2d.defocus_v is not None
    du, dv = float(result2d.defocus_u), float(result2d.defocus_v)
    astig = float(result2d.astigmatism or 0.0)
    angle = float(result2d.astigmatism_angle or 0.0)
    raw = {"defocus_u": du, "defocus_v": dv, "astigmatism": astig, "astigmatism_angle": angle}
    mean = 0.5 * (du + dv)
    return _ctf_result(seconds, 1e4 * (mean + astig), 1e4 * (mean - astig), angle, raw)
