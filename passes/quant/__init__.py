"""Quantization helpers shared by the `quantize` and `bit-allocation` passes.

uniform: affine grids per tensor or per channel; kmeans: 1-D Lloyd codebooks; layer: one weight to a
QuantizedTensor (specs, never-zero guard); refit: layer Grams and the least-squares codebook re-fit on layer
activations; gptq: error-compensated rounding onto a uniform grid (GPTQ);
sizing: coded-size estimate; apply: plans, fidelity against the incoming model; search: the
multiple-choice knapsack; allocate: sensitivity frontiers and the searches; report: markdown rows.
"""
