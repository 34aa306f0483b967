"""File input and output: the only package in cryosnake that touches files.

MRC/MRCS through :mod:`mrcfile`, TIFF movies through :mod:`tifffile`, STAR files in
RELION 3.1+ layout (read and written as :mod:`starfile` does, faster; particle files of
RELION 3.0 read as 3.1), atomic writes for everything. A missing, truncated or corrupt file raises
:class:`cryosnake.errors.FileFormatError` with a one-line message that names the file
and the problem.
"""

from cryosnake.io._atomic import atomic_path, require_file
from cryosnake.io._eer import write_eer
from cryosnake.io._misc import read_json, read_yaml, save_figure, write_json, write_yaml
from cryosnake.io._model import read_atomic_model
from cryosnake.io._mrc import read_mrc, read_mrc_header, write_mrc
from cryosnake.io._tiff import write_tiff_movie
from cryosnake.io.movie import MOVIE_SUFFIXES, Movie, open_movie, write_movie
from cryosnake.io.particles import read_particles
from cryosnake.io.star import (
    StarStack,
    optics_table,
    read_star,
    read_star_block,
    read_star_stack,
    star_files,
    write_star,
)

__all__ = [
    "MOVIE_SUFFIXES",
    "Movie",
    "StarStack",
    "atomic_path",
    "open_movie",
    "optics_table",
    "read_atomic_model",
    "read_json",
    "read_mrc",
    "read_mrc_header",
    "read_particles",
    "read_star",
    "read_star_block",
    "read_star_stack",
    "read_yaml",
    "require_file",
    "save_figure",
    "star_files",
    "write_eer",
    "write_json",
    "write_movie",
    "write_mrc",
    "write_star",
    "write_tiff_movie",
    "write_yaml",
]
