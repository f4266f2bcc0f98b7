// Decode-step elementwise ops on the CPU, one pass each.
//
// At decode the torch compositions of these ops (rotary: a float cast, four multiplies, two
// adds, a cat and a copy per tensor; the KV store: a mask, two gathers and two index copies)
// cost a few microseconds of dispatch per op on a few thousand values: 75-80 us per layer
// each on the development CPU, against 1-4 us here. Plain C++ (no FMA contraction), so the
// rotary rounds bit for bit as the torch expression does. (SiLU-and-mul stays torch's: its
// vectorised exp beat a scalar one 2x.)
#include "cpu_elementwise.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <cstring>

#include "cpu_simd.h"

namespace baton {
namespace {

using simd::to_float;

template <typename T>
void rotate(at::Tensor& x, const float* cos, const float* sin) {
  const int64_t N = x.size(0), H = x.size(1), half = x.size(2) / 2;
  const int64_t sn = x.stride(0), sh = x.stride(1);
  T* base = x.data_ptr<T>();
  at::parallel_for(0, N * H, 64, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / H, h = task % H;
      T* p = base + n * sn + h * sh;
      const float* c = cos + n * half;
      const float* s = sin + n * half;
      for (int64_t j = 0; j < half; ++j) {
        const float x1 = to_float(p[j]), x2 = to_float(p[j + half]);
        const float a = x1 * c[j], b = x2 * s[j], d = x2 * c[j], e = x1 * s[j];
        p[j] = T(a - b);
        p[j + half] = T(d + e);
      }
    }
  });
}

}  // namespace

void rotary_cpu_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (x.scalar_type() == at::kBFloat16) {
    rotate<c10::BFloat16>(x, cos.data_ptr<float>(), sin.data_ptr<float>());
  } else {
    rotate<float>(x, cos.data_ptr<float>(), sin.data_ptr<float>());
  }
}

void store_kv_cpu(const at::Tensor& k, const at::Tensor& v, at::Tensor& k_cache,
                  at::Tensor& v_cache, const at::Tensor& slots) {
  const int64_t N = k.size(0);
  const int64_t row = k.size(1) * k.size(2) * k.element_size();
  const int64_t* sp = slots.data_ptr<int64_t>();
  const char* kp = static_cast<const char*>(k.data_ptr());
  const char* vp = static_cast<const char*>(v.data_ptr());
  char* kc = static_cast<char*>(k_cache.data_ptr());
  char* vc = static_cast<char*>(v_cache.data_ptr());
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (sp[i] < 0) continue;
      std::memcpy(kc + sp[i] * row, kp + i * row, row);
      std::memcpy(vc + sp[i] * row, vp + i * row, row);
    }
  });
}

}  // namespace baton
