"""The embedded ONNX feature extractor(s), installed as the `tvcore.models` package."""
