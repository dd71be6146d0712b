"""What runs inside Triton: runners (ONNX Runtime, TensorRT), sampling and the scheduler.

Copied into each model version as the package ``genwire_runtime`` beside ``model.py``, so a
version keeps running the code it was built with. Only relative imports, numpy and the runner
libraries here: no genwire imports.
"""
