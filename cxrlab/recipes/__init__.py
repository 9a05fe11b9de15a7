"""cxrlab.recipes."""
