"""NumPy/CuPy selection.

Every numerical function in :mod:`cryosnake.ops` accepts NumPy or CuPy arrays and
returns the same kind. The array decides: ``xp = get_array_module(x)``. CuPy is an
optional extra (``pip install cryosnake[gpu]``); without it everything runs on NumPy
and :mod:`scipy.fft` (multi-threaded through ``workers``).

Stages resolve the user's ``--device auto|cpu|gpu`` once with :func:`resolve_device`,
move their inputs with :func:`to_device` and bring results back with :func:`to_host`.
Nothing in ``ops`` moves data between host and device behind the caller's back, except
where a particle stack too large for the GPU is streamed to it batch by batch (the 3D
refinement, documented there). :func:`available_memory` tells how much room a device
has, for planning batch sizes.

Examples
--------
>>> import numpy as np
>>> from cryosnake.backend import get_array_module
>>> get_array_module(np.zeros(3)).__name__
'numpy'
"""

from __future__ import annotations

import functools
import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any, Literal, TypeVar

import numpy as np
from threadpoolctl import threadpool_limits

from cryosnake.errors import CryosnakeError

__all__ = [
    "Device",
    "array_module",
    "available_memory",
    "cupy_available",
    "fft_kwargs",
    "fft_module",
    "fft_workers",
    "get_array_module",
    "gpu_available",
    "parallel_map",
    "pin_assigned_gpus",
    "resolve_device",
    "take_rows",
    "to_device",
    "to_host",
]

Device = Literal["cpu", "gpu"]
_T = TypeVar("_T")
_R = TypeVar("_R")
DEVICE_CHOICES = ("auto", "cpu", "gpu")


@functools.cache
def _cupy() -> ModuleType | None:
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA library that fails to load
        return None
    return cupy


def cupy_available() -> bool:
    """True when CuPy imports (it may still find no device)."""
    return _cupy() is not None


@functools.cache
def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    cp = _cupy()
    if cp is None:
        return False
    try:
        return int(cp.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


_GPU_UUID = re.compile(r"(GPU|MIG)-[0-9A-Za-z-]+")


def pin_assigned_gpus(
    environ: MutableMapping[str, str] | None = None, visible: int | None = None
) -> str | None:
    """Restrict CUDA to the GPUs the container runtime assigned to this process.

    AWS Batch (the ECS agent) tells a job that asked for GPUs which of its instance's
    GPUs are its own in ``NVIDIA_VISIBLE_DEVICES`` (their UUIDs, ``GPU-...``). The
    aws-batch executor registers every job definition as privileged, and a privileged
    container sees every GPU of the instance: CUDA would number them from 0 and each
    job of a multi-GPU instance would compute on the first. Copying the assignment to
    ``CUDA_VISIBLE_DEVICES`` (which accepts the same UUIDs) before CUDA starts makes
    device 0 the job's own GPU. Indices (``0,2``, Docker's ``--gpus device=``) are
    copied only when the container sees more GPUs than it was given (``visible``, by
    default the count of ``/dev/nvidiaN``), with CUDA told to number devices in PCI bus
    order as the runtime does; otherwise the runtime has already renumbered them from
    0. ``all``, ``none``, ``void``, an empty value, or a ``CUDA_VISIBLE_DEVICES``
    already set are left alone.

    Returns the value written to ``CUDA_VISIBLE_DEVICES``, or None.
    """
    env = os.environ if environ is None else environ
    assigned = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if "CUDA_VISIBLE_DEVICES" in env or assigned.lower() in ("", "all", "none", "void"):
        return None
    devices = [d.strip() for d in assigned.split(",") if d.strip()]
    if not all(_GPU_UUID.fullmatch(d) for d in devices):
        if not all(d.isdigit() for d in devices):
            return None  # not a form CUDA reads the same way
        if visible is None:
            visible = len([p for p in glob.glob("/dev/nvidia*") if p[11:].isdigit()])
        if visible <= len(devices):
            return None
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # the runtime's (nvidia-smi's) order
    value = ",".join(devices)
    env["CUDA_VISIBLE_DEVICES"] = value
    return value


def resolve_device(device: str = "auto") -> Device:
    """Resolve a user's ``--device`` choice.

    Parameters
    ----------
    device : {"auto", "cpu", "gpu"}
        ``auto`` picks the GPU when CuPy finds one, else the CPU. ``gpu`` fails with a
        :class:`CryosnakeError` when no GPU is usable. The environment variable
        ``CRYOSNAKE_DEVICE`` overrides ``auto`` (useful inside containers).
    """
    choice = device.lower().strip()
    if choice == "auto":
        choice = os.environ.get("CRYOSNAKE_DEVICE", "auto").lower().strip() or "auto"
    if choice not in DEVICE_CHOICES:
        raise CryosnakeError(f"--device: expected one of auto, cpu, gpu, got {device!r}")
    if choice == "cpu":
        return "cpu"
    if choice == "gpu":
        if not gpu_available():
            raise CryosnakeError(
                "--device gpu: no CUDA device usable (install cryosnake[gpu] and check "
                "nvidia-smi), or run with --device cpu"
            )
        return "gpu"
    return "gpu" if gpu_available() else "cpu"


def get_array_module(*arrays: Any) -> ModuleType:
    """Return :mod:`cupy` if any argument is a CuPy array, else :mod:`numpy`."""
    cp = _cupy()
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return np


def fft_module(xp: ModuleType) -> ModuleType:
    """FFT namespace for an array module: :mod:`cupy.fft` or :mod:`scipy.fft`."""
    if xp is np:
        import scipy.fft

        return scipy.fft
    return xp.fft


def fft_workers() -> int:
    """Threads for scipy.fft: ``CRYOSNAKE_THREADS``, else the CPUs this process may use."""
    env = os.environ.get("CRYOSNAKE_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError as err:
            raise CryosnakeError(f"CRYOSNAKE_THREADS: not an integer: {env!r}") from err
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def fft_kwargs(xp: ModuleType, workers: int | None = None) -> dict[str, Any]:
    """Keyword arguments for the FFT calls of ``fft_module(xp)``: on the CPU, ``workers``
    threads (default :func:`fft_workers`)."""
    if xp is not np:
        return {}
    return {"workers": fft_workers() if workers is None else workers}


def parallel_map(function: Callable[[_T], _R], items: Iterable[_T], xp: ModuleType) -> Iterator[_R]:
    """``map(function, items)``, in order, on :func:`fft_workers` threads for NumPy.

    For work made of independent pieces (tiles, patches) whose NumPy and scipy.fft
    calls on large arrays release the GIL: each piece then runs on one core, with
    ``fft_kwargs(xp, workers=1)`` inside, which also parallelises the element-wise
    work that a multi-threaded FFT alone leaves on one core. On CuPy the pieces run one
    after the other (the GPU is already parallel).
    """
    threads = fft_workers() if xp is np else 1
    if threads <= 1:
        yield from map(function, items)
        return
    # BLAS calls inside the pieces run on one thread each: OpenBLAS's own threads on
    # top of ours would oversubscribe the cores (and spin), costing a third of the time.
    with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        yield from pool.map(function, items)


def _parse_bytes(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError as err:
        raise CryosnakeError(f"CRYOSNAKE_MEMORY: not a size like 8G: {text!r}") from err
    if value <= 0:
        raise CryosnakeError(f"CRYOSNAKE_MEMORY: must be > 0, got {text!r}")
    return int(value * units[unit])


_CGROUP_V1 = "/sys/fs/cgroup/memory"


def _host_memory() -> int:
    """Bytes the host can still give: MemAvailable, capped by a cgroup (v2 or v1) limit
    (SLURM, containers, AWS Batch)."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic hosts
            available = 4 << 30
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (f"{_CGROUP_V1}/memory.limit_in_bytes", f"{_CGROUP_V1}/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as f:
                limit_text = f.read().strip()
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit_text.isdigit() and int(limit_text) < 1 << 60:
            available = min(available, max(int(limit_text) - usage, 0))
        break
    return available


def available_memory(xp: ModuleType) -> int:
    """Bytes free for work on the device of the array module ``xp``.

    On the GPU: the device's free memory plus what CuPy's memory pool holds unused. On
    the CPU: the host's available memory (within a cgroup limit). The environment
    variable ``CRYOSNAKE_MEMORY`` (e.g. ``8G``) caps either, for a node shared with other
    jobs.
    """
    if xp is np:
        free = _host_memory()
    else:
        device_free, _ = xp.cuda.runtime.memGetInfo()
        pool = xp.get_default_memory_pool()
        free = int(device_free) + int(pool.total_bytes() - pool.used_bytes())
    cap = os.environ.get("CRYOSNAKE_MEMORY")
    return min(free, _parse_bytes(cap)) if cap else free


def array_module(device: Device) -> ModuleType:
    """:mod:`numpy` for ``"cpu"``, :mod:`cupy` for ``"gpu"``."""
    if device == "cpu":
        return np
    cp = _cupy()
    if cp is None:
        raise CryosnakeError("--device gpu: CuPy is not installed (pip install cryosnake[gpu])")
    return cp


def to_device(array: Any, device: Device) -> Any:
    """Copy a host array to ``device`` (no copy when it is already there)."""
    if device == "cpu":
        return to_host(array)
    cp = _cupy()
    if cp is None:
        raise CryosnakeError("--device gpu: CuPy is not installed (pip install cryosnake[gpu])")
    return cp.asarray(array)


def take_rows(array: Any, indices: np.ndarray) -> Any:
    """``array[indices]`` on the array's own device (``indices``: NumPy integers); of a
    lazy row source (an object with a ``subset`` method, such as the particle stacks
    that :mod:`cryosnake.stages._images` streams), its lazy subset."""
    subset = getattr(array, "subset", None)
    if subset is not None and not isinstance(array, np.ndarray):
        return subset(indices)
    xp = get_array_module(array)
    return array[indices] if xp is np else array[xp.asarray(indices)]


def to_host(array: Any) -> np.ndarray:
    """Return a NumPy array (copying from the GPU when needed)."""
    cp = _cupy()
    if cp is not None and isinstance(array, cp.ndarray):
        return cp.asnumpy(array)
    return np.asarray(array)
