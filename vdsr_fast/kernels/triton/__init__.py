"""Triton kernels, one per file, and the engine backend that chains them (``backend.py``)."""
