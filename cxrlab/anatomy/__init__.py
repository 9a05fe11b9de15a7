"""cxrlab.anatomy."""
