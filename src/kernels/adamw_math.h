// AdamW's update of one element: the one definition that the CPU loop
// (kernels/cpu/ops_optim.cpp) and the CUDA kernel (kernels/cuda/) both call,
// so the two backends update parameters by the same formula
// (Backend::adamw_update documents it). Plain C++ that nvcc also compiles
// for the device.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define BOREALIS_HOST_DEVICE __host__ __device__
#else
#define BOREALIS_HOST_DEVICE
#endif

namespace borealis {

// The scalars stay float whatever T is: the float instantiation is the one
// that trains, and its rounding is the one the tests and checkpoints pin.
template <typename T>
BOREALIS_HOST_DEVICE inline void adamw_element(T& param, T grad, T& m, T& v, float lr, float beta1,
                                               float beta2, float eps, float weight_decay,
                                               float grad_scale, float c1, float c2) {
  const T g = grad * grad_scale;
  const T mi = beta1 * m + (1.0f - beta1) * g;
  const T vi = beta2 * v + (1.0f - beta2) * g * g;
  m = mi;
  v = vi;
#if defined(__CUDA_ARCH__)
  const T root = sqrt(vi * c2);
#else
  const T root = std::sqrt(vi * c2);
#endif
  param -= lr * (mi * c1 / (root + eps) + weight_decay * param);
}

}  // namespace borealis
