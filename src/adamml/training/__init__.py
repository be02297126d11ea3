"""The three-stage AdaMML recipe: unimodal, fusion baselines, adaptive policy."""
