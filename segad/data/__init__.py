"""Datasets as one table of samples, whatever the layout on disk."""

from segad.data.complex import COMPLEX_DEFECT_TYPES, ComplexSpec, load_complex
from segad.data.elpv import ELPV_CATEGORIES, load_elpv
from segad.data.images import ImageReadError, load_image, load_images, load_mask, load_segments, read_rgb
from segad.data.mvtec import load_mvtec
from segad.data.registry import BUILTIN_DATASETS, load_dataset
from segad.data.samples import GOOD, Dataset, DatasetError, Sample, Split
from segad.data.synthetic import DEFECT_TYPES, SyntheticSpec, load_synthetic, write_mvtec
from segad.data.textures import TEXTURE_CATEGORIES, TEXTURE_DEFECT_TYPES, TextureSpec, load_textures
from segad.data.visa import load_visa

__all__ = [
    "BUILTIN_DATASETS",
    "COMPLEX_DEFECT_TYPES",
    "DEFECT_TYPES",
    "ELPV_CATEGORIES",
    "GOOD",
    "TEXTURE_CATEGORIES",
    "TEXTURE_DEFECT_TYPES",
    "ComplexSpec",
    "Dataset",
    "DatasetError",
    "ImageReadError",
    "Sample",
    "Split",
    "SyntheticSpec",
    "TextureSpec",
    "load_complex",
    "load_dataset",
    "load_elpv",
    "load_image",
    "load_images",
    "load_mask",
    "load_mvtec",
    "load_segments",
    "load_synthetic",
    "load_textures",
    "load_visa",
    "read_rgb",
    "write_mvtec",
]
