"""Quantization helpers shared by the `quantize` and `bit-allocation` passes.

uniform: affine grids per tensor or per channel; kmeans: 1-D Lloyd codebooks; layer: one weight to a
QuantizedTensor; refit: least-squares codebook re-fit on layer activations; sizing: coded-size estimate;
search: sensitivity tables and the multiple-choice knapsack over per-layer options.
"""
