"""cxrlab.serve."""
