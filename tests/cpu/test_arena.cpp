// The activation arena: aligned slices, a clear error when a size plan misses a buffer, and
// a forward pass that uses exactly the bytes its plan computed from config and batch.
#include <gtest/gtest.h>

#include "model/forward.h"
#include "runtime/arena.h"
#include "runtime/error.h"
#include "test_util.h"

namespace phi3 {
namespace {

TEST(Arena, AlignedSlicesAndOverflowError) {
  auto be = make_cpu_backend();
  ArenaPlan plan;
  plan.add<float>(3).add<int32_t>(1000).add<float>(1);
  Arena a(*be, plan.bytes(), "test pass");
  EXPECT_EQ(plan.bytes(), 256u + 4096u + 256u);
  auto x = a.take<float>(3);
  auto y = a.take<int32_t>(1000);
  auto z = a.take<float>(1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(x.get()) % Arena::kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(y.get()) % Arena::kAlign, 0u);
  EXPECT_EQ(reinterpret_cast<uint8_t*>(z.get()) - reinterpret_cast<uint8_t*>(x.get()), 256 + 4096);
  EXPECT_EQ(a.used(), a.capacity());
  try {
    a.take<float>(1);
    FAIL() << "a full arena must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("test pass"), std::string::npos) << e.what();
  }
  a.reset();
  EXPECT_EQ(a.used(), 0u);
  // Borrowed slices are not freed by DeviceArray: the arena owns the memory.
  { auto w = a.take<float>(3); }
  EXPECT_EQ(a.used(), 256u);
}

TEST(Arena, ForwardUsesExactlyItsPlan) {
  auto be = make_cpu_backend();
  auto m = load_model(*be, test::source_dir() + "/data/models/tiny-temporal-phi3");
  Batch b = make_batch({{1, 5, 6, 7}, {1, 8}}, m->cfg.pad_token_id);
  for (bool keep : {true, false}) {
    ForwardOptions o;
    o.keep_pattern = keep;
    ForwardState s = forward(*be, *m, b, o);
    EXPECT_EQ(s.arena->capacity(), forward_arena_bytes(*m, 2, 4, keep));
    EXPECT_EQ(s.arena->used(), s.arena->capacity());
  }
}

}  // namespace
}  // namespace phi3
