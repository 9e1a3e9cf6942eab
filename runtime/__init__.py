"""Online side: load an engine set within a memory budget and run the cascade.

Imports only numpy, pillow, msgspec (and onnxruntime when that backend is used): never
torch, transformers or onnx.
"""

from .cascade import Cascade, Decision
from .classifier import ClassifierStage, sigmoid
from .images import ImageLimits, decode_image, resize_to
from .load import EngineSet, load_engine_set
from .stages import Stage

__all__ = ["Cascade", "ClassifierStage", "Decision", "Stage", "ImageLimits", "decode_image", "resize_to", "EngineSet", "load_engine_set", "sigmoid"]
