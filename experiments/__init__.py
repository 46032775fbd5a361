"""Orchestration: run the pipeline and measure it (the demo, the 1..N producer
experiment, the benchmark, the producer fleet), on top of ``stack.control`` and the
components; results go into run directories that ``analysis`` reads."""
