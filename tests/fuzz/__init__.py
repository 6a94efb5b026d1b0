"""Fuzz targets and their seed corpus (``tests/fuzz/corpus/<target>/``); see :mod:`fuzz.targets`."""
