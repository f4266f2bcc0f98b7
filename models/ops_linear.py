"""nn.Linear whose product runs through the kernel registry (ops.linear).

Same parameters and checkpoint names as nn.Linear; on the CPU the registry sends float32
products of up to kernels.linear.SKINNY_MAX_ROWS rows, and every bfloat16 product, to the
native GEMM (csrc/skinny_linear.cpp).
"""
from torch import nn


class OpsLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, ops, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.ops = ops

    def forward(self, x):
        return self.ops.linear(x, self.weight, self.bias)
