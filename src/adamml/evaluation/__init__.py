"""Metrics, GFLOPs accounting, paper-style tables and plots."""
