"""adamml: adaptive multi-modal video recognition (AdaMML, Panda et al., ICCV 2021).

The package is laid out the way data flows through it:
``data`` (video files -> cached decoded media) -> ``modalities`` (media -> per-segment tensors)
-> ``models`` (backbones, recognition sub-networks, policy, fusion, AdaMML) -> ``training``
-> ``evaluation`` -> ``inference`` -> ``cli``.
"""

__version__ = "0.1.0"
