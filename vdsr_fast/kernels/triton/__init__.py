"""Triton kernels, one per file (conv3x3.py, tail.py), their shared pixel mapping (pixels.py), and the engine backend that chains them (``backend.py``)."""
