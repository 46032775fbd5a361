"""The embedded local stack (python -m stack up|down|status)."""
