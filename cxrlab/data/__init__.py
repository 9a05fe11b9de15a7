"""Manifest, importers, splits, exclusions, label fusion, the chest phantom and torch Datasets."""

from importlib import import_module

from cxrlab.data.manifest import Manifest, load_manifest, save_manifest

# Heavier parts load on first use, so `import cxrlab.data` stays cheap.
_LAZY = {
    "import_dataset": "cxrlab.data.importers",
    "list_importers": "cxrlab.data.importers",
    "register_importer": "cxrlab.data.importers",
    "validate_manifest": "cxrlab.data.validate",
    "ValidationIssue": "cxrlab.data.validate",
    "apply_exclusions": "cxrlab.data.exclusions",
    "ExclusionConfig": "cxrlab.data.exclusions",
    "fuse_manifests": "cxrlab.data.fusion",
    "LabelMap": "cxrlab.data.fusion",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrlab.data' has no attribute {name!r}")


__all__ = ["Manifest", "load_manifest", "save_manifest", *_LAZY]
