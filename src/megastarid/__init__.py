"""MegaStarID: re-identify individual sea stars from photos."""

__version__ = "0.1.0"
