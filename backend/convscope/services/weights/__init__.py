"""Weights that read: expanded weights, first-layer filter analysis, comparing two checkpoints.

- ``linearize``: the network with its nonlinearities set aside (a ``HookScope`` context).
- ``expanded``: gradient of one channel at the centre w.r.t. the image or an earlier layer.
- ``analysis``: orientation, spatial frequency, colour class and energy of first-layer filters.
- ``compare``: per-layer weight change, filter cosine, linear CKA of two same-architecture models.
- ``views``: ``WeightViews``, the composition the facade calls (model, image, compute, render).
"""
