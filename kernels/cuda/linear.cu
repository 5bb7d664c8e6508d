// Linear layer through cuBLAS, with an optional bias.
//
// forward:   y[N, out] (+)= x[N, in] W^T (+ b)  W [out, in] row-major (HF layout); accumulate
//            selects beta = 1: o_proj / down_proj add straight into the residual stream;
//            a bias (Weight::bias, fp32 [out]: Qwen2's q/k/v, Llama's attention_bias /
//            mlp_bias) is added to every row by one more pass (bias_add_kernel)
// backward:  dx[N, in] (+)= dy[N, out] W       (accumulate selects beta = 1)
// Nothing is saved: backward needs only W (no weight gradients in this engine).
//
// Row-major -> cuBLAS column-major: a row-major [r, c] matrix is a column-major [c, r] one,
// so y^T = W x^T is  gemm(T, N, m=out, n=N, k=in, A=W (lda=in), B=x (ldb=in), C=y (ldc=out))
// and dx^T = W^T dy^T is gemm(N, N, m=in, n=N, k=out, A=W (lda=in), B=dy (ldb=out), C=dx).
//
// fp32 W: cublasGemmEx with fp32 A/B/C and CUBLAS_COMPUTE_32F (TF32 off): the fp32 mode
//   stays within summation-order rounding of the CPU reference.
// bf16 W: the activations (fp32) are first rounded to bf16 into a per-stream scratch buffer
//   by our cast kernel (round-to-nearest-even), then cublasGemmEx runs with A = W (bf16),
//   B = x (bf16), C = y (fp32), CUBLAS_COMPUTE_32F: tensor-core bf16 products with fp32
//   accumulation and an fp32 output, so the residual stream never leaves fp32. This is what
//   a bf16 `transformers` model computes (its activations are bf16 at every GEMM input).
//   cuBLASLt was not chosen: it offers no bf16 x fp32 mixed-input GEMM either, so the cast
//   is needed regardless, and plain cublasGemmEx keeps the handle/workspace story simple.
//   The cast costs one extra pass over x (N*in*6 bytes) and a launch; the ops that produce
//   GEMM inputs (RMSNorm, SwiGLU, attention) can write the bf16 copy themselves (GemmOut),
//   and linear_forward then reads it (GemmIn::bf16) with no cast at all.
// The cast's scratch is kScratchCastA, sized by kernels/scratch.h. Handles and scratch come from the calling thread's per-(device, stream) cache
// (kernels/cuda/context.cu).
#include "kernels/cuda/cast.cuh"
#include "kernels/cuda/common.cuh"

namespace phi3::cuda {
namespace {

void check_weight(const Weight& W, const char* op) {
  PHI3_CHECK(W.data != nullptr, std::string(op) + ": weight has no data");
  PHI3_CHECK(W.rows > 0 && W.cols > 0, std::string(op) + ": empty weight");
  PHI3_CHECK(W.rows <= INT32_MAX && W.cols <= INT32_MAX,
             std::string(op) + ": weight too large for cuBLAS int dimensions");
  PHI3_CHECK(W.dtype == DType::F32 || W.dtype == DType::BF16,
             std::string(op) + " (cuda): unsupported weight dtype " + dtype_name(W.dtype) +
                 " (convert F16 weights to BF16 or F32 at load)");
}

// Rounds `bytes / 2` floats of `src` to bf16 in the stream's scratch buffer (bytes: what
// kernels/scratch.h gives for the op, so the memory plan counts the same buffer).
const uint16_t* to_bf16_scratch(const float* src, size_t bytes, cudaStream_t s) {
  auto* buf = static_cast<uint16_t*>(scratch(s, bytes, kScratchCastA));
  cast_f32_to_bf16(buf, src, static_cast<int64_t>(bytes / 2), s);
  return buf;
}

// C[m, n] (col-major, ldc) = alpha op(A) op(B) + beta C with A = W. B16: B already in bf16
// (GemmIn::bf16), used instead of casting B when W is bf16; cast_bytes: the bf16 copy of B
// (ldb * n elements) otherwise.
void gemm(cudaStream_t s, cublasOperation_t opA, int m, int n, int k, const Weight& W, int lda,
          const float* B, const uint16_t* B16, int ldb, float beta, float* C, int ldc, size_t cast_bytes) {
  cublasHandle_t h = blas_handle(s);
  const float alpha = 1.0f;
  if (W.dtype == DType::F32) {
    PHI3_CHECK(B != nullptr, "linear (cuda): fp32 weights need the fp32 input");
    CUBLAS_CHECK(cublasGemmEx(h, opA, CUBLAS_OP_N, m, n, k, &alpha, W.data, CUDA_R_32F, lda, B,
                              CUDA_R_32F, ldb, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
  } else {
    PHI3_CHECK(B || B16, "linear (cuda): no input");
    PHI3_CHECK(B16 || cast_bytes == size_t(ldb) * size_t(n) * 2, "linear (cuda): cast size mismatch");
    const uint16_t* Bh = B16 ? B16 : to_bf16_scratch(B, cast_bytes, s);
    CUBLAS_CHECK(cublasGemmEx(h, opA, CUBLAS_OP_N, m, n, k, &alpha, W.data, CUDA_R_16BF, lda,
                              Bh, CUDA_R_16BF, ldb, &beta, C, CUDA_R_32F, ldc,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
}

__global__ void bias_add_kernel(float* y, const float* b, int64_t n, int out) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    y[i] += b[i % out];
}

}  // namespace

void linear_forward(float* y /*[N,out]*/, GemmIn x /*[N,in]*/, const Weight& W, int N,
                    bool accumulate, Stream stream) {
  check_weight(W, "linear_forward");
  PHI3_CHECK(N >= 0, "linear_forward: negative N");
  if (N == 0) return;
  const int out = static_cast<int>(W.rows), in = static_cast<int>(W.cols);
  gemm(as_cuda(stream), CUBLAS_OP_T, out, N, in, W, in, x.f32, x.bf16, in,
       accumulate ? 1.0f : 0.0f, y, out, linear_forward_scratch(W, N, x.bf16 != nullptr));
  if (W.bias) {
    const int64_t n = int64_t(N) * out;
    launch(bias_add_kernel, dim3(grid_for(n, 256)), dim3(256), 0, as_cuda(stream), y, W.bias, n, out);
    PHI3_LAUNCH_CHECK();
  }
}

void linear_backward(float* dx /*[N,in]*/, const float* dy /*[N,out]*/, const Weight& W, int N,
                     bool accumulate, Stream stream) {
  check_weight(W, "linear_backward");
  PHI3_CHECK(N >= 0, "linear_backward: negative N");
  if (N == 0) return;
  const int out = static_cast<int>(W.rows), in = static_cast<int>(W.cols);
  gemm(as_cuda(stream), CUBLAS_OP_N, in, N, out, W, in, dy, nullptr, out,
       accumulate ? 1.0f : 0.0f, dx, in, linear_backward_scratch(W, N));
}

}  // namespace phi3::cuda
