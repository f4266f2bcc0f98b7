// A plain read of a tensor's bytes as several sequential streams per thread, for the benches'
// bandwidth floor; see stream_read.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace baton {

// The sum modulo 2^32 of a contiguous CPU tensor's bytes read as little-endian 32-bit words
// (any last 1-3 bytes added as bytes), each thread reading its share as `streams` equal runs
// side by side.
uint32_t stream_read_sum(const at::Tensor& x, int64_t streams);

}  // namespace baton
