"""nn.Linear whose product runs through the kernel registry (ops.linear).

Same parameters and checkpoint names as nn.Linear; on the CPU the registry sends each product
to the native GEMM (csrc/skinny_linear.cpp) or to torch's, whichever kernels.cpu_routing
measured faster for its shape. Every linear layer of the model is one, the vision tower's patch
embedding and mergers included: left as nn.Linear, those ran torch's bfloat16 GEMM, emulated on
AVX2, for about a quarter of a 224 px bfloat16 TTFT on bench-0.5b.
"""
from torch import nn


class OpsLinear(nn.Linear):
    def __init__(self, in_features: int, out_features: int, ops, bias: bool = False):
        super().__init__(in_features, out_features, bias=bias)
        self.ops = ops

    def forward(self, x):
        return self.ops.linear(x, self.weight, self.bias)
