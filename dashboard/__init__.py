"""The live dashboard (``python -m dashboard``): throughput, latency percentiles, lag, dead
letters and the latest classified images, from MongoDB and Prometheus (docs/OBSERVABILITY.md).

A small Flask app of its own, never inside the inference workers; it sits at the
orchestration level and imports only ``common``.
"""
