"""Plumbing every layer may use and that uses none of them: checkpoint files, the
distributed runtime, atomic file writes and the run-folder layout."""
