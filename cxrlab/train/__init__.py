"""cxrlab.train."""
