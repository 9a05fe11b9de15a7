"""What every command that takes images accepts, resolved in one place.

>>> resolve_inputs(["a.png", "scans/"]).df["image"]     # files, and folders searched recursively
>>> resolve_inputs("data/phantom")                       # a folder holding manifest.csv: that manifest
>>> resolve_inputs("data/phantom/manifest.parquet")      # a manifest file

A path may be an image file (PNG, JPEG, DICOM, TIFF, BMP; a DICOM file without a suffix is recognised by its
``DICM`` preamble), a folder (its ``manifest.csv``/``manifest.parquet`` when it has one, else every image under
it, hidden files skipped), or a manifest file (``.csv``/``.parquet``). Anything else is an
:class:`~cxrlab.errors.InputError` naming the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pandas as pd

from cxrlab.data import schema
from cxrlab.data.importers._common import IMAGE_SUFFIXES, scan_images
from cxrlab.data.manifest import TABLE_SUFFIXES, Manifest, load_manifest
from cxrlab.errors import InputError

MANIFEST_NAMES = ("manifest.parquet", "manifest.csv")
_KINDS = ", ".join(sorted(IMAGE_SUFFIXES))


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _check_exists(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise InputError(path, f"broken symbolic link (points to {os.readlink(path)}, which does not exist)")
    if not path.exists():
        raise InputError(path, "no such file or folder")


def _folder_images(folder: Path) -> list[Path]:
    try:
        images = scan_images(folder)
    except OSError as exc:
        raise InputError(folder, f"cannot list folder: {exc.strerror or exc}") from None
    if not images:
        raise InputError(folder, f"folder holds no images ({_KINDS}) and no manifest.csv")
    return images


def is_manifest_path(path: str | os.PathLike) -> bool:
    """True when ``path`` is read as a manifest: a table file, or a folder holding ``manifest.csv``/``.parquet``."""
    path = Path(path)
    if path.is_dir():
        return any((path / name).is_file() for name in MANIFEST_NAMES)
    return path.suffix.lower() in TABLE_SUFFIXES


def resolve_inputs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Manifest:
    """Images given as files, folders (recursive) or manifests → one :class:`Manifest`, one row per image.

    Rows from manifests keep all their columns; images given directly (or found in folders) get only ``image``
    (an absolute path; the same file named twice is kept once). ``attrs["kind"]`` says what was given:
    ``"manifest"`` (manifests only), ``"images"`` (files and folders of images only) or ``"mixed"``;
    ``source`` is the manifest file when exactly one manifest and nothing else was given.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise InputError("inputs", "no image, folder or manifest given")
    manifests: list[Manifest] = []
    images: list[str] = []
    seen: set[str] = set()

    def add_image(p: Path) -> None:
        key = str(p.resolve())
        if key not in seen:
            seen.add(key)
            images.append(key)

    for item in items:
        path = Path(item)
        _check_exists(path)
        if path.is_dir():
            if is_manifest_path(path):
                manifests.append(load_manifest(path))
            else:
                for image in _folder_images(path):
                    add_image(image)
        elif path.suffix.lower() in TABLE_SUFFIXES:
            manifests.append(load_manifest(path))
        elif path.suffix.lower() in IMAGE_SUFFIXES or _is_dicom(path):
            if not path.is_file():
                raise InputError(path, "not a regular file")
            add_image(path)
        else:
            raise InputError(path, f"not an image ({_KINDS}, or DICOM without suffix) nor a manifest "
                                   f"({', '.join(sorted(TABLE_SUFFIXES))}) nor a folder")
    frames = [m.df for m in manifests]
    if images:
        frames.append(pd.DataFrame({schema.IMAGE: images}))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    kind = "mixed" if manifests and images else ("manifest" if manifests else "images")
    source = manifests[0].source if len(manifests) == 1 and not images else None
    return Manifest(df, source=source, attrs={"kind": kind})
