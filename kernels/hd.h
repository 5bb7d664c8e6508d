// PHI3_HD marks per-element math shared by the CPU ops and the CUDA kernels.
#pragma once
#if defined(__CUDACC__)
#define PHI3_HD __host__ __device__ __forceinline__
#else
#define PHI3_HD inline
#endif
