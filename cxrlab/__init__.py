"""cxrlab: chest X-ray AI for respiratory outbreaks.

Library API first; the ``cxrlab`` command is a thin Typer layer over it.
"""

__version__ = "0.1.0"
