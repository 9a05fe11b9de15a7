"""cxrlab.severity."""
