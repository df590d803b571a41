"""Logs (and, later, metrics and traces) for operators."""
