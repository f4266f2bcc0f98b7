// Budgeted, order-preserving token selection on the CPU.
//
// Tokens are ranked by (score descending, index ascending): a strict total order, so the
// result is deterministic under ties. Without segments the `budget` best tokens are found
// with nth_element (O(N) average) and returned in index order. With segments, a segment is
// ranked by its best token, and segments are taken greedily in that order whenever they still
// fit in the remaining budget (a segment that does not fit is skipped, later smaller ones may
// still be taken), so the total never exceeds the budget.
#include "scoring.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

namespace baton {
namespace {

template <typename scalar_t>
struct Better {
  const scalar_t* s;
  bool operator()(int64_t a, int64_t b) const {
    return s[a] > s[b] || (s[a] == s[b] && a < b);
  }
};

at::Tensor to_tensor(const std::vector<int64_t>& idx, const at::Tensor& like) {
  at::Tensor out = at::empty({static_cast<int64_t>(idx.size())}, like.options().dtype(at::kLong));
  if (!idx.empty()) std::memcpy(out.data_ptr<int64_t>(), idx.data(), idx.size() * sizeof(int64_t));
  return out;
}

template <typename scalar_t>
std::vector<int64_t> top_tokens(const scalar_t* s, int64_t n, int64_t budget) {
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), int64_t{0});
  if (budget >= n) return idx;
  std::nth_element(idx.begin(), idx.begin() + budget, idx.end(), Better<scalar_t>{s});
  idx.resize(budget);
  std::sort(idx.begin(), idx.end());
  return idx;
}

template <typename scalar_t>
std::vector<int64_t> top_segments(const scalar_t* s, const int64_t* seg, int64_t n,
                                  int64_t budget) {
  const Better<scalar_t> better{s};
  std::vector<int64_t> begin;  // first token of each segment, plus n as a sentinel
  std::vector<int64_t> best;   // best token of each segment
  for (int64_t i = 0; i < n; ++i) {
    if (i == 0 || seg[i] != seg[i - 1]) {
      begin.push_back(i);
      best.push_back(i);
    } else if (better(i, best.back())) {
      best.back() = i;
    }
  }
  begin.push_back(n);
  const int64_t nseg = static_cast<int64_t>(best.size());
  std::vector<int64_t> order(nseg);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(),
            [&](int64_t a, int64_t b) { return better(best[a], best[b]); });
  std::vector<char> take(nseg, 0);
  int64_t remaining = budget;
  for (int64_t k : order) {
    if (remaining == 0) break;
    const int64_t len = begin[k + 1] - begin[k];
    if (len <= remaining) {
      take[k] = 1;
      remaining -= len;
    }
  }
  std::vector<int64_t> idx;
  idx.reserve(budget - remaining);
  for (int64_t k = 0; k < nseg; ++k) {
    if (!take[k]) continue;
    for (int64_t i = begin[k]; i < begin[k + 1]; ++i) idx.push_back(i);
  }
  return idx;
}

}  // namespace

at::Tensor select_tokens_cpu(const at::Tensor& scores, int64_t budget,
                             const std::optional<at::Tensor>& segment_ids, bool expand_segments) {
  const int64_t n = scores.size(0);
  std::vector<int64_t> idx;
  if (scores.scalar_type() == at::kDouble) {
    const double* s = scores.data_ptr<double>();
    idx = expand_segments ? top_segments(s, segment_ids->data_ptr<int64_t>(), n, budget)
                          : top_tokens(s, n, budget);
  } else {
    const float* s = scores.data_ptr<float>();
    idx = expand_segments ? top_segments(s, segment_ids->data_ptr<int64_t>(), n, budget)
                          : top_tokens(s, n, budget);
  }
  return to_tensor(idx, scores);
}

}  // namespace baton
