"""NumPy/CuPy selection and device resolution."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scipy.fft

from cryosnake import backend
from cryosnake.errors import CryosnakeError


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Behave as on a machine without CuPy, whatever this machine has."""
    monkeypatch.setattr(backend, "_cupy", lambda: None)
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    monkeypatch.delenv("CRYOSNAKE_DEVICE", raising=False)


def test_numpy_arrays_get_numpy() -> None:
    assert backend.get_array_module(np.zeros(3)) is np
    assert backend.get_array_module(np.zeros(3), np.ones((2, 2))) is np
    assert backend.get_array_module() is np
    assert backend.get_array_module(3.0, [1, 2]) is np


def test_fft_module_for_numpy_is_scipy() -> None:
    assert backend.fft_module(np) is scipy.fft
    assert backend.fft_kwargs(np) == {"workers": backend.fft_workers()}


@pytest.mark.usefixtures("no_gpu")
def test_resolve_device_without_gpu() -> None:
    assert backend.resolve_device("cpu") == "cpu"
    assert backend.resolve_device("auto") == "cpu"
    assert backend.resolve_device(" AUTO ") == "cpu"
    assert backend.resolve_device() == "cpu"
    with pytest.raises(CryosnakeError) as err:
        backend.resolve_device("gpu")
    assert "\n" not in str(err.value)
    assert "--device" in str(err.value)


@pytest.mark.usefixtures("no_gpu")
def test_resolve_device_rejects_unknown_choice() -> None:
    with pytest.raises(CryosnakeError) as err:
        backend.resolve_device("tpu")
    assert "--device" in str(err.value) and "tpu" in str(err.value)


def test_resolve_device_with_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    monkeypatch.delenv("CRYOSNAKE_DEVICE", raising=False)
    assert backend.resolve_device("auto") == "gpu"
    assert backend.resolve_device("gpu") == "gpu"
    assert backend.resolve_device("cpu") == "cpu"


@pytest.mark.usefixtures("no_gpu")
def test_environment_overrides_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYOSNAKE_DEVICE", "cpu")
    assert backend.resolve_device("auto") == "cpu"
    monkeypatch.setenv("CRYOSNAKE_DEVICE", "gpu")
    with pytest.raises(CryosnakeError):
        backend.resolve_device("auto")  # asked for a GPU through the environment
    assert backend.resolve_device("cpu") == "cpu"  # an explicit choice wins
    monkeypatch.setenv("CRYOSNAKE_DEVICE", "")
    assert backend.resolve_device("auto") == "cpu"
    monkeypatch.setenv("CRYOSNAKE_DEVICE", "quantum")
    with pytest.raises(CryosnakeError):
        backend.resolve_device("auto")


def test_environment_selects_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    monkeypatch.setenv("CRYOSNAKE_DEVICE", "cpu")
    assert backend.resolve_device("auto") == "cpu"  # e.g. a CPU-only container on a GPU host
    monkeypatch.setenv("CRYOSNAKE_DEVICE", "gpu")
    assert backend.resolve_device("auto") == "gpu"


def test_fft_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRYOSNAKE_THREADS", "3")
    assert backend.fft_workers() == 3
    monkeypatch.setenv("CRYOSNAKE_THREADS", "0")
    assert backend.fft_workers() == 1
    monkeypatch.setenv("CRYOSNAKE_THREADS", "many")
    with pytest.raises(CryosnakeError) as err:
        backend.fft_workers()
    assert "CRYOSNAKE_THREADS" in str(err.value)
    monkeypatch.delenv("CRYOSNAKE_THREADS")
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    assert backend.fft_workers() >= 1
    if expected is not None:
        assert backend.fft_workers() == expected


@pytest.mark.usefixtures("no_gpu")
def test_host_device_transfers_without_cupy() -> None:
    x = np.arange(6.0).reshape(2, 3)
    assert backend.to_host(x) is x
    np.testing.assert_array_equal(backend.to_device(x, "cpu"), x)
    assert isinstance(backend.to_host([1, 2]), np.ndarray)
    with pytest.raises(CryosnakeError):
        backend.to_device(x, "gpu")
    assert backend.cupy_available() is False


def test_available_memory_and_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CRYOSNAKE_MEMORY", raising=False)
    free = backend.available_memory(np)
    assert 0 < free < 1 << 50
    monkeypatch.setenv("CRYOSNAKE_MEMORY", "1.5G")
    assert backend.available_memory(np) == min(free, int(1.5 * (1 << 30)))
    monkeypatch.setenv("CRYOSNAKE_MEMORY", "300MiB")
    assert backend.available_memory(np) == min(free, 300 << 20)
    for bad in ("lots", "-2G", "0"):
        monkeypatch.setenv("CRYOSNAKE_MEMORY", bad)
        with pytest.raises(CryosnakeError, match="CRYOSNAKE_MEMORY"):
            backend.available_memory(np)


def test_array_module_of_the_cpu() -> None:
    assert backend.array_module("cpu") is np


@pytest.mark.gpu
def test_cupy_arrays_get_cupy() -> None:
    cp = pytest.importorskip("cupy")
    if not backend.gpu_available():
        pytest.skip("no CUDA device")
    x = cp.zeros(4)
    assert backend.get_array_module(x) is cp
    assert backend.get_array_module(np.zeros(2), x) is cp
    assert backend.fft_module(cp) is cp.fft
    assert backend.fft_kwargs(cp) == {}
    y = backend.to_device(np.arange(3.0), "gpu")
    assert isinstance(y, cp.ndarray)
    np.testing.assert_array_equal(backend.to_host(y), np.arange(3.0))
    assert backend.resolve_device("gpu") == "gpu"


def test_take_rows_stays_on_the_host() -> None:
    a = np.arange(12).reshape(6, 2)
    np.testing.assert_array_equal(backend.take_rows(a, np.array([4, 1])), [[8, 9], [2, 3]])


# --------------------------------------------------------------------------------------
# the GPU a Batch job was given

UUID_A = "GPU-1d6a7b4e-2c3f-4a5b-8c9d-0e1f2a3b4c5d"
UUID_B = "GPU-9f8e7d6c-5b4a-4321-8765-43210fedcba9"


@pytest.mark.parametrize(
    ("assigned", "visible", "expected"),
    [
        (UUID_B, 4, UUID_B),  # ECS: the job's own GPU of a 4-GPU instance, by UUID
        (f"{UUID_A},{UUID_B}", 1, f"{UUID_A},{UUID_B}"),  # UUIDs are safe at any count
        ("2", 4, "2"),  # an index in a privileged container that sees all four
        ("2", 1, None),  # the runtime already gave it one device, renumbered 0
        ("all", 4, None),
        ("none", 4, None),
        ("void", 4, None),
        ("", 4, None),
    ],
)
def test_pin_assigned_gpus(assigned: str, visible: int, expected: str | None) -> None:
    env = {"NVIDIA_VISIBLE_DEVICES": assigned}
    assert backend.pin_assigned_gpus(env, visible=visible) == expected
    assert env.get("CUDA_VISIBLE_DEVICES") == expected
    # indices are the runtime's PCI bus order, which CUDA follows only when told to
    indices = expected is not None and expected.isdigit()
    assert (env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID") == indices


def test_pin_assigned_gpus_keeps_a_users_choice() -> None:
    env = {"NVIDIA_VISIBLE_DEVICES": UUID_B, "CUDA_VISIBLE_DEVICES": "0"}
    assert backend.pin_assigned_gpus(env, visible=4) is None
    assert env["CUDA_VISIBLE_DEVICES"] == "0"


def test_cli_pins_the_assigned_gpu_before_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    """`cryosnake STAGE` sets CUDA_VISIBLE_DEVICES from the job's assignment before the
    stage (and CUDA) starts."""
    from cryosnake import cli

    environ = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    monkeypatch.setattr(os, "environ", {**environ, "NVIDIA_VISIBLE_DEVICES": UUID_B})
    seen: dict[str, str | None] = {}

    class Stage:
        @staticmethod
        def main(argv: list[str]) -> int:
            seen["cuda"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            return 0

    monkeypatch.setattr(cli, "_load", lambda command: Stage)
    assert cli.main(["pick", "--help"]) == 0
    assert seen["cuda"] == UUID_B
