"""segmote: SegMoTE on frozen SAM-family backbones for medical image segmentation."""

__version__ = "0.1.0"
