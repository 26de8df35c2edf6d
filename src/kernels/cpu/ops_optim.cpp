// The optimizer's arithmetic on the CPU: AdamW's update (each element by
// kernels/adamw_math.h, which the CUDA backend shares), the sum of squares
// behind gradient norms, and scaling. OpenMP loops the compiler vectorizes.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/adamw_math.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace borealis::cpu {

template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, std::int64_t count, float lr, float b1,
                  float b2, float eps, float wd, float grad_scale, float c1, float c2) {
#pragma omp parallel for simd schedule(static) if (worth_threads(count))
  for (std::int64_t i = 0; i < count; ++i) {
    adamw_element(params[i], grads[i], m[i], v[i], lr, b1, b2, eps, wd, grad_scale, c1, c2);
  }
}

template <typename T>
double sum_of_squares(const T* x, std::int64_t count) {
  constexpr std::int64_t kBlock = 1 << 16;
  const std::int64_t blocks = (count + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<std::size_t>(blocks), 0.0);
#pragma omp parallel for schedule(static) if (worth_threads(count))
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t end = std::min(count, (b + 1) * kBlock);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (std::int64_t i = b * kBlock; i < end; ++i) {
      s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
    }
    partial[static_cast<std::size_t>(b)] = s;
  }
  double total = 0.0;
  for (const double s : partial) total += s;
  return total;
}

template <typename T>
void scale(T* x, T factor, std::int64_t count) {
#pragma omp parallel for simd schedule(static) if (worth_threads(count))
  for (std::int64_t i = 0; i < count; ++i) x[i] *= factor;
}

template <typename T>
void add(T* out, const T* in, std::int64_t count) {
#pragma omp parallel for simd schedule(static) if (worth_threads(count))
  for (std::int64_t i = 0; i < count; ++i) out[i] += in[i];
}

#define BOREALIS_INSTANTIATE(T)                                                                 \
  template void add<T>(T*, const T*, std::int64_t);                                             \
  template void adamw_update<T>(T*, const T*, T*, T*, std::int64_t, float, float, float, float, \
                                float, float, float, float);                                    \
  template double sum_of_squares<T>(const T*, std::int64_t);                                    \
  template void scale<T>(T*, T, std::int64_t);
BOREALIS_INSTANTIATE(float)
BOREALIS_INSTANTIATE(double)
#undef BOREALIS_INSTANTIATE

}  // namespace borealis::cpu
