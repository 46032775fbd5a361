"""Fault injection on the real local stack (see tests/faults/run.py and docs/RELIABILITY.md)."""
