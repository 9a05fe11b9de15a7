"""cxrlab.tasks."""
