import os

# Triton kernels must see the interpreter flag before they are decorated; CPU machines have
# no GPU, so every Triton test runs interpreted there.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
