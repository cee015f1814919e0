"""Execution: one cell (runner), its process (worker), the matrix and its executors."""
