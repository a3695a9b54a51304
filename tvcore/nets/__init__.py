"""The torch side (the torch extra): backbones, export to ONNX, fine-tuning."""
