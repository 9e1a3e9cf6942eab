"""streetcascade: compiled cascade inference for NATIX StreetVision miners.

Subpackages (each a top-level folder of the repository):
  streetcascade.compile      offline: checkpoint -> ONNX -> engine set (needs the `compile` extra)
  streetcascade.calibration  datasets, validator augmentations, calibration
  streetcascade.runtime      online: load an engine set, run the cascade (numpy + onnxruntime only)
  streetcascade.miner        the bittensor 9.x-compatible axon
"""

__version__ = "0.1.0"

# Run from a checkout without installing it (a GPU machine whose Python must stay as it is:
# bench/gpu_check.sh): the subpackages are the checkout's top-level folders (pyproject.toml's
# package-dir mapping), so they are looked for there too. An installed copy has no pyproject.toml
# and no compile/ beside it and is unaffected; an editable install maps to the same files.
import os as _os

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(_os.path.join(_checkout, "compile", "__init__.py")):
    __path__.append(_checkout)  # noqa: F821 - a package's __path__
del _os, _checkout
