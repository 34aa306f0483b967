"""Synthetic cryo-EM data with exact ground truth.

Examples
--------
>>> from cryosnake.simulate import make_params, simulate_dataset
>>> params = make_params("tiny", seed=3)
>>> summary = simulate_dataset(params, "data/tiny")  # doctest: +SKIP
"""

from cryosnake.simulate._atoms import (
    Atoms,
    atoms_from_model,
    phantom_atoms,
    phantom_states,
    render_projection,
    render_volume,
)
from cryosnake.simulate._dataset import DatasetSummary, load_specimen, simulate_dataset, volume_box
from cryosnake.simulate._engine import Detector, MovieTruth, Specimen, make_detector, simulate_movie
from cryosnake.simulate._params import PRESETS, SimulationParams, make_params
from cryosnake.simulate._scoring import matched_picks

__all__ = [
    "PRESETS",
    "Atoms",
    "DatasetSummary",
    "Detector",
    "MovieTruth",
    "SimulationParams",
    "Specimen",
    "atoms_from_model",
    "load_specimen",
    "make_detector",
    "make_params",
    "matched_picks",
    "phantom_atoms",
    "phantom_states",
    "render_projection",
    "render_volume",
    "simulate_dataset",
    "simulate_movie",
    "volume_box",
]
