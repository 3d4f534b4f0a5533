"""anomedge: fit visual anomaly detectors on good images, export them, run them torch-free at the edge."""

__version__ = "0.1.0"
