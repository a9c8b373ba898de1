"""Backbone families (SD 1.x/2.x, SDXL, SANA, Wan) behind one interface (dti.backbones.base), each class
looked up by family name in dti.backbones.catalog; the family table itself is dti.families (torch-free).

The package imports nothing itself: importing one of its modules must not import the others.
"""

from __future__ import annotations
