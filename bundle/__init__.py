"""PLGDF semi-supervised 3D segmentation: the importable code of the MONAI bundle."""

__version__ = "0.1.0"
