"""Export to ONNX (polymodal.export.onnx_export, needs torch) and serve exports without torch
(polymodal.export.runtime). Nothing here is imported eagerly: the runtime must load without torch."""
