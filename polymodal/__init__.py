"""polymodal: multimodal models end to end, offline-first.

    import polymodal
    model = polymodal.load("lite")
    model.encode_image(["cat.jpg"]); model.encode_text(["a cat"]); model.classify(["cat.jpg"], ["cat", "dog"])
"""

from polymodal.errors import PolymodalError
from polymodal.registry import available_models, load

__version__ = "0.1.0"
__all__ = ["load", "available_models", "PolymodalError", "__version__"]
