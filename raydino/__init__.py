"""raydino: a Ray-native training system for a DINOv2-guided progressive generator."""

__version__ = "0.1.0"
