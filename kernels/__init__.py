"""Baton's op library: Triton kernels, their plain-torch references, and native scoring ops."""
