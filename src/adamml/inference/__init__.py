"""Run a trained model on arbitrary video files."""
