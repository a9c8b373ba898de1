"""Backbone families (SD 1.x/2.x, SDXL) behind one interface, looked up by name."""

from dti.backbones.base import (
                                Backbone,
                                TextEncoderSlot,
                                backbone_class,
                                detect_family,
                                load_backbone,
                                register_family,
)

__all__ = ["Backbone", "backbone_class", "TextEncoderSlot", "detect_family", "load_backbone", "register_family"]
