"""cxrlab.transforms."""
