"""Backbones, per-modality recognition sub-networks, fusion heads, the policy network, AdaMML."""
