"""Reading images: PNG / JPEG (8/16-bit) and DICOM radiographs to float32 [0, 1] plus a de-identified header.

>>> image, header = read_image("case.dcm")          # MONOCHROME1 inverted, VOI LUT applied
>>> mask = read_mask("lung.png", expected_shape=image.shape)
>>> write_png("out/image.png", image)
"""

from cxrlab.io.dicom import RADIOGRAPH_MODALITIES, deidentify_dicom, read_dicom_header
from cxrlab.io.header import ImageHeader
from cxrlab.io.raster import ColorImageWarning
from cxrlab.io.read import image_size, read_image, read_image_bytes, read_mask, sniff, write_png

__all__ = [
    "ColorImageWarning",
    "ImageHeader",
    "RADIOGRAPH_MODALITIES",
    "deidentify_dicom",
    "image_size",
    "read_dicom_header",
    "read_image",
    "read_image_bytes",
    "read_mask",
    "sniff",
    "write_png",
]
