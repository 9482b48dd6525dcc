// GELU and its derivative in fp32, host and device: nanoGPT's exact nn.GELU() (erf) and GPT-2's
// tanh approximation, as torch defines them (F.gelu, approximate='none' / 'tanh').
//   erf:  g(x)  = x Phi(x),                 Phi(x) = (1 + erf(x / sqrt 2)) / 2
//         g'(x) = Phi(x) + x phi(x),         phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
//   tanh: g(x)  = x (1 + tanh u) / 2,       u = sqrt(2/pi) (x + 0.044715 x^3)
//         g'(x) = (1 + tanh u) / 2 + x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2
#pragma once
#include <cmath>

#if defined(__CUDACC__)
#define FASTGPT_HD __host__ __device__ __forceinline__
#else
#define FASTGPT_HD inline
#endif

namespace fastgpt::gemm {

constexpr float kSqrt1_2 = 0.7071067811865476f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.3989422804014327f;  // 1 / sqrt(2 pi)
constexpr float kSqrt2_Pi = 0.7978845608028654f;    // sqrt(2 / pi)
constexpr float kGeluCubic = 0.044715f;

struct Identity {
  FASTGPT_HD float operator()(float x) const { return x; }
};

struct GeluErf {
  FASTGPT_HD float operator()(float x) const { return 0.5f * x * (1.f + erff(x * kSqrt1_2)); }
  FASTGPT_HD static float grad(float x) {
    return 0.5f * (1.f + erff(x * kSqrt1_2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
  }
};

struct GeluTanh {
  FASTGPT_HD float operator()(float x) const {
    return 0.5f * x * (1.f + tanhf(kSqrt2_Pi * (x + kGeluCubic * x * x * x)));
  }
  FASTGPT_HD static float grad(float x) {
    const float t = tanhf(kSqrt2_Pi * (x + kGeluCubic * x * x * x));
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * kSqrt2_Pi * (1.f + 3.f * kGeluCubic * x * x);
  }
};

}  // namespace fastgpt::gemm
