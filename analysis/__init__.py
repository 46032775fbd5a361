"""Latency analysis: percentiles, CDF plots and reports over run directories."""
