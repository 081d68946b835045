"""Shared machinery of the sparsification passes: targets, layer views, cheap evaluation, re-fitting, search."""
