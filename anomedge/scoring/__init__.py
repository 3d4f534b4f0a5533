"""Scoring: one package for the kNN / Mahalanobis math, host and graph.

- ``kernels``: ``KnnIndex``, ``MahalanobisIndex``, ``OnnxKnnIndex`` (edge side, numpy / onnxruntime).
- ``heads``: artifact scoring kind → host head (graph outputs → (N,h,w) patch scores).
- ``postprocess``: patch scores → anomaly maps and image scores.
- ``graph``: the one chunked ONNX builder (``knn.onnx``, the placement-graph head); imports onnx,
  used at export only — nothing on the edge imports it.
"""
