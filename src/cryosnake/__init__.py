"""cryosnake: a GPU-accelerated cryo-EM single-particle pipeline.

All computation lives in this package: :mod:`cryosnake.io` (files), :mod:`cryosnake.ops`
(array numerics on NumPy or CuPy), :mod:`cryosnake.simulate` (ground-truth data) and
:mod:`cryosnake.stages` (one command per pipeline stage, ``cryosnake <stage>``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryosnake")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
