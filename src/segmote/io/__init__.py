"""Image and label-map I/O: every input format behind one small interface.

    image = read_image("ct.nii.gz")            # or .png/.jpg/.tif/.npy/.npz/.nrrd/.mha/.dcm/folder
    label = ...                                # (X, Y, Z) for volumes, (H, W) for 2-D images
    write_label(label, image, "out/")          # -> out/ct_seg.nii.gz with the same affine

Conventions, formats and geometry rules: see :mod:`segmote.io.image`, :mod:`segmote.io.readers`
and :mod:`segmote.io.writers`.
"""

from segmote.io.image import ImageData
from segmote.io.readers import read_image
from segmote.io.labels import LabelInfo
from segmote.io.writers import label_names_path, output_path_for, write_label

__all__ = ["ImageData", "LabelInfo", "read_image", "write_label", "output_path_for",
           "label_names_path"]
