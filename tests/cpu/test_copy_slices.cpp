// copy_column_slices (patching/copy_slices.h), the sweeps' head-slice and neuron gather: row
// and column kept apart, so a source of more than 2^31 floats (mlp_post at B·T·F > 2^31) gives
// the right cells where a flat int32 element index (row * F + neuron) wrapped.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "patching/copy_slices.h"
#include "runtime/backend.h"
#include "runtime/error.h"

namespace phi3 {
namespace {

TEST(CopySlices, HeadSlicesAndNeuronsLandInTheirColumns) {
  auto be = make_cpu_backend();
  const int R = 5, W = 8;
  std::vector<float> src(R * W), dst(3 * W, -1.0f);
  for (int i = 0; i < R * W; ++i) src[i] = float(i);
  DeviceArray<float> d_src = to_device(*be, src), d_dst = to_device(*be, dst);
  ColumnRows by_col;
  by_col[2] = {{0, 2}, {4, 1}};  // columns 2..3 of dst rows 0 and 2 from src rows 4 and 1
  by_col[6] = {{1}, {3}};        // columns 6..7 of dst row 1 from src row 3
  copy_column_slices(*be, d_dst.get(), W, d_src.get(), W, 2, by_col);
  be->download(dst.data(), d_dst.get(), dst.size() * sizeof(float));
  std::vector<float> want(3 * W, -1.0f);
  want[0 * W + 2] = 4 * W + 2, want[0 * W + 3] = 4 * W + 3;
  want[2 * W + 2] = 1 * W + 2, want[2 * W + 3] = 1 * W + 3;
  want[1 * W + 6] = 3 * W + 6, want[1 * W + 7] = 3 * W + 7;
  EXPECT_EQ(dst, want);
  ColumnRows bad;
  bad[0] = {{0, 1}, {0}};
  EXPECT_THROW(copy_column_slices(*be, d_dst.get(), W, d_src.get(), W, 1, bad), Error);
}

// 2^28 + 64 rows of F = 8 neurons: 2^31 + 512 floats (8 GiB of address space; only the pages
// of the cells written here are touched). Rows past 2^28 have flat indices past 2^31.
TEST(CopySlices, NeuronGatherPastTwoToThe31Elements) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "an 8 GiB allocation under AddressSanitizer (its shadow); the plain build runs it";
#else
  auto be = make_cpu_backend();
  const int F = 8;
  const int64_t R = (int64_t(1) << 28) + 64;
  DeviceArray<float> act(*be, size_t(R) * F);
  struct Cell {
    int32_t row;
    int neuron;
    float value;
  };
  const std::vector<Cell> cells = {{int32_t(R - 1), 7, 11.0f},
                                   {int32_t((int64_t(1) << 28) + 3), 0, 22.0f},
                                   {int32_t((int64_t(1) << 28) - 1), 5, 33.0f},  // below 2^31: unchanged
                                   {int32_t(R - 2), 7, 44.0f}};
  ColumnRows by_neuron;
  for (size_t i = 0; i < cells.size(); ++i) {
    const Cell& c = cells[i];
    be->upload(act.get() + int64_t(c.row) * F + c.neuron, &c.value, sizeof(float));
    by_neuron[c.neuron].first.push_back(int32_t(i));
    by_neuron[c.neuron].second.push_back(c.row);
  }
  std::vector<float> out(cells.size() * F, 0.0f);
  DeviceArray<float> d_out = to_device(*be, out);
  copy_column_slices(*be, d_out.get(), F, act.get(), F, 1, by_neuron);
  be->download(out.data(), d_out.get(), out.size() * sizeof(float));
  for (size_t i = 0; i < cells.size(); ++i)
    for (int f = 0; f < F; ++f)
      EXPECT_EQ(out[i * F + f], f == cells[i].neuron ? cells[i].value : 0.0f) << "cell " << i << " neuron " << f;
#endif
}

}  // namespace
}  // namespace phi3
