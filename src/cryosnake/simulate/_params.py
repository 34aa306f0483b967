"""Simulation parameters and presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from cryosnake.errors import ConfigError

__all__ = ["PRESETS", "SimulationParams", "make_params"]


@dataclass(frozen=True)
class SimulationParams:
    """Everything that defines a simulated dataset. Units: Å, e/Å², kV, mm, degrees."""

    n_movies: int = 6
    width: int = 1024
    height: int = 1024
    n_frames: int = 30
    pixel_size: float = 1.5
    dose_per_frame: float = 1.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_min: float = 8000.0
    defocus_max: float = 22000.0
    astigmatism_max: float = 1500.0
    phase_shift: float = 0.0
    envelope_bfactor: float = 30.0
    specimen: str = "phantom"  # "phantom", or a path to a map (.mrc) or a model (.pdb/.cif)
    particle_diameter: float = 150.0
    phantom_seed: int = 2026
    # Two-state specimen (phantom only): this fraction of the particles, drawn per particle,
    # lack the phantom's domain ``partial_domain`` (1-3; 2 is 13 % of its mass, 1 is 25 %).
    partial_fraction: float = 0.0
    partial_domain: int = 2
    particles_per_micrograph: int = 40
    solvent_noise: float = 0.07
    ice_thickness_variation: float = 0.08
    junk: bool = True
    aggregates_per_micrograph: float = 1.5
    ice_blobs_per_micrograph: float = 1.0
    radiation_damage: bool = True
    drift_scale: float = 1.0
    local_motion: float = 1.2
    gain_sd: float = 0.06
    hot_pixel_fraction: float = 2e-5
    movie_format: str = "mrc"
    seed: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = (
            "n_movies",
            "width",
            "height",
            "n_frames",
            "pixel_size",
            "dose_per_frame",
            "voltage",
            "particle_diameter",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"simulate parameter '{name}': must be > 0")
        non_negative = (
            "cs",
            "astigmatism_max",
            "envelope_bfactor",
            "particles_per_micrograph",
            "solvent_noise",
            "ice_thickness_variation",
            "aggregates_per_micrograph",
            "ice_blobs_per_micrograph",
            "drift_scale",
            "local_motion",
            "gain_sd",
            "hot_pixel_fraction",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"simulate parameter '{name}': must be >= 0")
        if not 0 <= self.amplitude_contrast < 1:
            raise ConfigError("simulate parameter 'amplitude_contrast': must be in [0, 1)")
        if not 0 < self.defocus_min <= self.defocus_max:
            raise ConfigError(
                "simulate parameters 'defocus_min'/'defocus_max': need 0 < min <= max"
            )
        if not 0 <= self.partial_fraction < 1:
            raise ConfigError("simulate parameter 'partial_fraction': must be in [0, 1)")
        if self.partial_domain not in (1, 2, 3):
            raise ConfigError("simulate parameter 'partial_domain': must be 1, 2 or 3")
        if self.partial_fraction > 0 and self.specimen != "phantom":
            raise ConfigError(
                "simulate parameter 'partial_fraction': a partial state needs the domains of "
                "the built-in phantom (specimen 'phantom')"
            )
        if self.movie_format not in ("mrc", "tiff"):
            raise ConfigError("simulate parameter 'movie_format': expected 'mrc' or 'tiff'")
        if self.particle_diameter / self.pixel_size > 0.8 * min(self.width, self.height):
            raise ConfigError("simulate parameter 'particle_diameter': larger than the micrograph")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def movie_suffix(self) -> str:
        return ".mrc" if self.movie_format == "mrc" else ".tif"

    def movie_stem(self, index: int) -> str:
        """Stem of movie ``index`` (0-based): movie_0001, movie_0002, ..."""
        return f"movie_{index + 1:04d}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Small enough for the whole workflow in minutes on 2 cores, every effect on.
    "demo": {},
    # Unit tests: seconds.
    "tiny": {
        "n_movies": 2,
        "width": 256,
        "height": 256,
        "n_frames": 8,
        "pixel_size": 2.5,
        "dose_per_frame": 3.0,
        "particles_per_micrograph": 6,
        "aggregates_per_micrograph": 0.5,
        "ice_blobs_per_micrograph": 0.5,
    },
    # A K3/Falcon-sized movie for speed measurements.
    "benchmark": {
        "n_movies": 2,
        "width": 4096,
        "height": 4096,
        "n_frames": 40,
        "pixel_size": 1.0,
        "particles_per_micrograph": 250,
        "aggregates_per_micrograph": 3.0,
        "ice_blobs_per_micrograph": 2.0,
    },
}

_FIELDS = {f.name: f for f in dataclasses.fields(SimulationParams) if f.name != "extra"}


def _coerce(name: str, value: Any) -> Any:
    target: type = type(_FIELDS[name].default)
    if isinstance(value, str) and target is not str:
        text = value.strip()
        try:
            if target is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return target(float(text)) if target is int else target(text)
        except ValueError as err:
            raise ConfigError(
                f"simulate parameter '{name}': cannot read {value!r} as {target.__name__}"
            ) from err
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, target) or (target is not bool and isinstance(value, bool)):
        raise ConfigError(f"simulate parameter '{name}': expected {target.__name__}, got {value!r}")
    return value


def make_params(preset: str = "demo", **overrides: Any) -> SimulationParams:
    """Parameters of a preset with ``overrides`` applied (None values are ignored)."""
    if preset not in PRESETS:
        raise ConfigError(f"simulate preset {preset!r}: expected one of {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset])
    for name, value in overrides.items():
        if value is None:
            continue
        if name not in _FIELDS:
            raise ConfigError(
                f"simulate parameter '{name}': unknown (see cryosnake simulate --help)"
            )
        values[name] = _coerce(name, value)
    return SimulationParams(**values)
