"""Manifest, importers, splits, exclusions, label fusion, the chest phantom and torch Datasets."""

from cxrlab.data.manifest import Manifest, load_manifest, save_manifest

__all__ = ["Manifest", "load_manifest", "save_manifest"]
