"""Directional Textual Inversion: learn a subject token's direction on the unit sphere."""

__version__ = "0.1.0"
