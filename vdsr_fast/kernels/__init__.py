"""Fast kernels: Triton (``kernels/triton``) and the CUDA extension wrapper (``kernels/cuda.py``)."""
