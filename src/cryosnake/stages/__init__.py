"""Pipeline stages: one module per stage with ``add_args(parser)`` and ``main(argv)``."""

__all__: list[str] = []
