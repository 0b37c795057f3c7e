"""Datasets on disk: the seed layout, ISBI 2012 download and import, and synthetic EM-like slices."""
