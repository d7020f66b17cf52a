"""Export: Hugging Face checkpoints, ONNX bundles and arena submission bundles."""
