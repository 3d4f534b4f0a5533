"""Serving beyond one box: a Triton model repository from an artifact (``triton``), the python-backend
model that wraps the runtime (``triton_model``), a local tritonserver launcher for tests and benchmarks
(``local_server``), and re-scoring image archives on Ray Data (``rescore``). Optional extras only:
nothing here is imported by the edge runtime."""
