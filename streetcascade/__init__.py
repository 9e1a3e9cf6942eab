"""streetcascade: compiled cascade inference for NATIX StreetVision miners.

Subpackages (each a top-level folder of the repository):
  streetcascade.compile      offline: checkpoint -> ONNX -> engine set (needs the `compile` extra)
  streetcascade.calibration  datasets, validator augmentations, calibration
  streetcascade.runtime      online: load an engine set, run the cascade (numpy + onnxruntime only)
  streetcascade.miner        the bittensor 9.x-compatible axon
"""

__version__ = "0.1.0"
