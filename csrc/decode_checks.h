// Value checks shared by the CPU decode ops' bindings and the native decode stack: every KV
// block a decode step reads, and every cache slot it writes, must exist.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace baton {

// tables: contiguous int32 [B, max_blocks]; lens: contiguous int32 [B].
inline void check_decode_tables(const at::Tensor& tables, const at::Tensor& lens, int64_t num_blocks,
                                int64_t block_size, const char* op) {
  const int32_t* tp = tables.data_ptr<int32_t>();
  const int32_t* lp = lens.data_ptr<int32_t>();
  const int64_t width = tables.size(1);
  for (int64_t b = 0; b < tables.size(0); ++b) {
    TORCH_CHECK_VALUE(lp[b] >= 0 && lp[b] <= width * block_size, op, ": context_lens[", b, "] = ",
                      lp[b], " does not fit ", width, " blocks of ", block_size);
    for (int64_t i = 0; i < (lp[b] + block_size - 1) / block_size; ++i) {
      const int32_t id = tp[b * width + i];
      TORCH_CHECK_VALUE(id >= 0 && id < num_blocks, op, ": block_tables[", b, ", ", i, "] = ", id,
                        " is not a block of the cache (", num_blocks, " blocks)");
    }
  }
}

// slots: contiguous int64 [N]; negative slots are skipped by the store.
inline void check_slots(const at::Tensor& slots, int64_t capacity, const char* op) {
  const int64_t* sp = slots.data_ptr<int64_t>();
  for (int64_t i = 0; i < slots.size(0); ++i)
    TORCH_CHECK_VALUE(sp[i] < capacity, op, ": slot_mapping[", i, "] = ", sp[i], " is past the cache (",
                      capacity, " slots)");
}

}  // namespace baton
