// safetensors reader/writer: round trips (F32, BF16, I32 written; F16 read), sharded
// checkpoints with an index, and malformed files, each rejected with a message that names
// the file, the tensor where there is one, and the problem.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/safetensors.h"
#include "test_util.h"

namespace phi3 {
namespace {

using ::testing::HasSubstr;

std::string u64le(uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return s;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A hand-made file: correct length prefix, the given header text and data bytes.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  write_bytes(path, u64le(header.size()) + header + data);
}

std::string zeros(size_t n) { return std::string(n, '\0'); }

using test::error_of;

std::string open_error(const std::string& path) {
  return error_of([&] { SafeTensors::open_file(path); });
}

class SafeTensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::temp_dir(std::string("safetensors-") +
                          ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override {
    if (!HasFailure()) std::filesystem::remove_all(dir_);  // kept for inspection on failure
  }
  std::string path(const std::string& name) const { return path_join(dir_, name); }
  std::string dir_;
};

// ---- round trips ----------------------------------------------------------------------

TEST_F(SafeTensorsTest, RoundTripF32Bf16I32) {
  std::vector<float> a = test::random_vec(2 * 3, 1);
  std::vector<float> b = test::random_vec(5, 2, -100, 100);
  b.push_back(1.00390625f);  // halfway between two bf16 values: ties to even (down)
  b.push_back(1.01171875f);  // halfway: ties to even (up)
  std::vector<int32_t> ids = {1, 450, 7306, -5, 2147483647};
  const std::string p = path("model.safetensors");
  write_safetensors(p,
                    {tensor_bf16("b", {7}, b), tensor_f32("a", {2, 3}, a), tensor_i32("ids", {5}, ids),
                     tensor_f32("empty", {0, 4}, {}), tensor_f32("scalar", {}, {3.5f})},
                    {{"format", "pt"}, {"note", "round trip"}});

  // The header is padded to a multiple of 8 bytes.
  std::ifstream f(p, std::ios::binary);
  unsigned char len[8];
  f.read(reinterpret_cast<char*>(len), 8);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len[i];
  EXPECT_EQ(n % 8, 0u);

  SafeTensors st = SafeTensors::open_file(p);
  EXPECT_EQ(st.size(), 5u);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"a", "b", "empty", "ids", "scalar"}));
  EXPECT_EQ(st.metadata().at("format"), "pt");
  EXPECT_EQ(st.metadata().at("note"), "round trip");

  const TensorInfo& ta = st.get("a");
  EXPECT_EQ(ta.dtype, DType::F32);
  EXPECT_EQ(ta.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta.numel(), 6);
  EXPECT_EQ(ta.nbytes, 24u);
  EXPECT_EQ(ta.file, p);
  EXPECT_EQ(st.to_f32("a"), a);  // bitwise
  std::vector<uint16_t> a16 = st.to_bf16("a");
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a16[i], float_to_bf16_bits(a[i]));

  const TensorInfo& tb = st.get("b");
  EXPECT_EQ(tb.dtype, DType::BF16);
  EXPECT_EQ(tb.nbytes, 14u);
  std::vector<uint16_t> b16 = st.to_bf16("b");
  std::vector<float> bf = st.to_f32("b");
  for (size_t i = 0; i < b.size(); ++i) {
    EXPECT_EQ(b16[i], float_to_bf16_bits(b[i]));
    EXPECT_EQ(bf[i], bf16_bits_to_float(float_to_bf16_bits(b[i])));
    EXPECT_LE(std::fabs(bf[i] - b[i]), std::fabs(b[i]) * (1.0f / 256));  // bf16: 8 significant bits
  }
  EXPECT_EQ(b16[5], 0x3f80);  // 1.00390625 -> 1.0
  EXPECT_EQ(b16[6], 0x3f82);  // 1.01171875 -> 1.015625

  EXPECT_EQ(st.get("ids").dtype, DType::I32);
  EXPECT_EQ(st.to_i32("ids"), ids);
  EXPECT_EQ(st.to_f32("ids")[1], 450.0f);
  EXPECT_EQ(st.get("empty").numel(), 0);
  EXPECT_TRUE(st.to_f32("empty").empty());
  EXPECT_EQ(st.get("scalar").numel(), 1);
  EXPECT_EQ(st.to_f32("scalar"), std::vector<float>{3.5f});

  // No temp file is left behind by the atomic write.
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir_)) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 1);
}

TEST_F(SafeTensorsTest, ReadsF16) {
  // 1, -2, smallest subnormal, largest normal, +inf, 1/3 (rounded), -0
  const uint16_t bits[] = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x7c00, 0x3555, 0x8000};
  const float want[] = {1.0f, -2.0f, 5.9604644775390625e-08f, 65504.0f, INFINITY, 0.333251953125f, -0.0f};
  std::string data(reinterpret_cast<const char*>(bits), sizeof bits);
  write_raw(path("h.safetensors"), R"({"h":{"dtype":"F16","shape":[7],"data_offsets":[0,14]}})", data);
  SafeTensors st = SafeTensors::open_file(path("h.safetensors"));
  EXPECT_EQ(st.get("h").dtype, DType::F16);
  std::vector<float> f = st.to_f32("h");
  ASSERT_EQ(f.size(), 7u);
  for (int i = 0; i < 7; ++i) {
    EXPECT_EQ(f[i], want[i]) << i;
    EXPECT_EQ(std::signbit(f[i]), std::signbit(want[i])) << i;
  }
  std::vector<uint16_t> b = st.to_bf16("h");
  for (int i = 0; i < 7; ++i) EXPECT_EQ(b[i], float_to_bf16_bits(want[i])) << i;
}

TEST_F(SafeTensorsTest, ErrorsForMissingTensorAndWrongKind) {
  write_safetensors(path("m.safetensors"), {tensor_f32("w", {2}, {1, 2})});
  SafeTensors st = SafeTensors::open_file(path("m.safetensors"));
  EXPECT_FALSE(st.has("nope"));
  EXPECT_TRUE(st.has("w"));
  EXPECT_THAT(error_of([&] { st.get("nope"); }), HasSubstr("tensor 'nope' not found in " + path("m.safetensors")));
  EXPECT_THAT(error_of([&] { st.to_f32("nope"); }), HasSubstr("tensor 'nope' not found"));
  EXPECT_THAT(error_of([&] { st.to_i32("w"); }), HasSubstr("tensor 'w' is F32, not I32"));
}

TEST_F(SafeTensorsTest, WriterRejectsBadInput) {
  EXPECT_THAT(error_of([&] {
                write_safetensors(path("d.safetensors"), {tensor_f32("x", {1}, {1}), tensor_f32("x", {1}, {2})});
              }),
              HasSubstr("tensor 'x': name given twice"));
  EXPECT_THAT(error_of([&] { write_safetensors(path("d.safetensors"), {tensor_f32("x", {3}, {1, 2})}); }),
              HasSubstr("tensor 'x': 8 bytes given but F32 [3] needs 12"));
  EXPECT_THAT(error_of([&] { write_safetensors(path("d.safetensors"), {tensor_f32("__metadata__", {1}, {1})}); }),
              HasSubstr("reserved"));
  EXPECT_FALSE(file_exists(path("d.safetensors")));
  const std::string nodir = path("no/such/dir/x.safetensors");
  EXPECT_THAT(error_of([&] { write_safetensors(nodir, {tensor_f32("x", {1}, {1})}); }),
              HasSubstr("cannot write '" + nodir + "'"));
}

// ---- directories and shards -------------------------------------------------------------

TEST_F(SafeTensorsTest, OpenDirSingleFile) {
  write_safetensors(path("model.safetensors"), {tensor_f32("model.norm.weight", {4}, {1, 2, 3, 4})});
  SafeTensors st = SafeTensors::open_dir(dir_);
  EXPECT_EQ(st.to_f32("model.norm.weight"), (std::vector<float>{1, 2, 3, 4}));
}

TEST_F(SafeTensorsTest, OpenDirSharded) {
  write_safetensors(path("model-00001-of-00002.safetensors"),
                    {tensor_bf16("model.embed_tokens.weight", {3, 2}, {1, 2, 3, 4, 5, 6}),
                     tensor_f32("model.layers.0.input_layernorm.weight", {2}, {0.5f, 0.25f})});
  write_safetensors(path("model-00002-of-00002.safetensors"),
                    {tensor_bf16("lm_head.weight", {3, 2}, {-1, -2, -3, -4, -5, -6}),
                     tensor_f32("model.norm.weight", {2}, {7, 8})});
  write_bytes(path("model.safetensors.index.json"), R"({
    "metadata": {"total_size": 40},
    "weight_map": {
      "lm_head.weight": "model-00002-of-00002.safetensors",
      "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
      "model.layers.0.input_layernorm.weight": "model-00001-of-00002.safetensors",
      "model.norm.weight": "model-00002-of-00002.safetensors"
    }})");
  SafeTensors st = SafeTensors::open_dir(dir_);
  EXPECT_EQ(st.size(), 4u);
  EXPECT_EQ(st.names(), (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight",
                                                  "model.layers.0.input_layernorm.weight", "model.norm.weight"}));
  EXPECT_EQ(st.metadata().at("total_size"), "40");
  EXPECT_EQ(st.to_f32("lm_head.weight"), (std::vector<float>{-1, -2, -3, -4, -5, -6}));
  EXPECT_EQ(st.to_f32("model.embed_tokens.weight"), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(st.to_f32("model.norm.weight"), (std::vector<float>{7, 8}));
  EXPECT_EQ(st.get("model.norm.weight").file, path("model-00002-of-00002.safetensors"));
  EXPECT_EQ(st.get("model.embed_tokens.weight").file, path("model-00001-of-00002.safetensors"));
}

TEST_F(SafeTensorsTest, OpenDirErrors) {
  EXPECT_THAT(error_of([&] { SafeTensors::open_dir(path("missing")); }),
              HasSubstr("model directory '" + path("missing") + "' does not exist"));
  EXPECT_THAT(error_of([&] { SafeTensors::open_dir(dir_); }),
              HasSubstr("has neither model.safetensors nor model.safetensors.index.json"));
  EXPECT_THAT(open_error(path("nothere.safetensors")), HasSubstr("does not exist"));
}

// ---- malformed files ----------------------------------------------------------------------

TEST_F(SafeTensorsTest, RejectsFileShorterThan8Bytes) {
  write_bytes(path("tiny.safetensors"), "abc");
  EXPECT_THAT(open_error(path("tiny.safetensors")),
              HasSubstr("tiny.safetensors: file is 3 bytes, too short for a safetensors header"));
  write_bytes(path("empty.safetensors"), "");
  EXPECT_THAT(open_error(path("empty.safetensors")), HasSubstr("file is 0 bytes"));
}

TEST_F(SafeTensorsTest, RejectsHeaderLengthPastEof) {
  write_bytes(path("h.safetensors"), u64le(1000) + "{}");
  EXPECT_THAT(open_error(path("h.safetensors")),
              HasSubstr("h.safetensors: header length 1000 runs past the end of the file (10 bytes"));
  write_bytes(path("huge.safetensors"), u64le(~0ull) + "{}");
  EXPECT_THAT(open_error(path("huge.safetensors")), HasSubstr("runs past the end of the file"));
}

TEST_F(SafeTensorsTest, RejectsHeaderLengthOverLimit) {
  // A sparse 100 MB + file, so the length is inside the file but over the sanity limit.
  const std::string p = path("big.safetensors");
  write_bytes(p, u64le(150000000) + "{}");
  std::filesystem::resize_file(p, 150000000 + 8);
  EXPECT_THAT(open_error(p), HasSubstr("header length 150000000 exceeds the 100000000-byte limit"));
}

TEST_F(SafeTensorsTest, RejectsTruncatedFile) {
  const std::string p = path("model.safetensors");
  write_safetensors(p, {tensor_f32("model.norm.weight", {4}, {1, 2, 3, 4})});
  std::filesystem::resize_file(p, std::filesystem::file_size(p) - 6);  // cut into the data
  EXPECT_THAT(open_error(p), HasSubstr("model.safetensors: tensor 'model.norm.weight': data_offsets [0, 16] "
                                       "run past the end of the data section (10 bytes)"));
  std::filesystem::resize_file(p, 20);  // cut into the header
  EXPECT_THAT(open_error(p), HasSubstr("runs past the end of the file (20 bytes"));
}

TEST_F(SafeTensorsTest, RejectsInvalidJson) {
  write_raw(path("j.safetensors"), R"({"a": {"dtype": "F32", )", "");
  EXPECT_THAT(open_error(path("j.safetensors")), HasSubstr("j.safetensors: header is not valid JSON"));
  write_raw(path("j2.safetensors"), "\xff\xfe garbage", "");
  EXPECT_THAT(open_error(path("j2.safetensors")), HasSubstr("header is not valid JSON"));
}

TEST_F(SafeTensorsTest, RejectsHeaderThatIsNotAnObject) {
  write_raw(path("a.safetensors"), "[1, 2, 3]", "");
  EXPECT_THAT(open_error(path("a.safetensors")), HasSubstr("a.safetensors: header is not a JSON object (got array)"));
  write_raw(path("b.safetensors"), R"({"w": [1, 2]})", "");
  EXPECT_THAT(open_error(path("b.safetensors")), HasSubstr("tensor 'w': entry is not a JSON object (got array)"));
}

TEST_F(SafeTensorsTest, RejectsOffsetsOutOfRange) {
  write_raw(path("o.safetensors"), R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", zeros(16));
  EXPECT_THAT(open_error(path("o.safetensors")),
              HasSubstr("o.safetensors: tensor 'w': data_offsets [8, 24] run past the end of the data section "
                        "(16 bytes)"));
  write_raw(path("r.safetensors"), R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", zeros(16));
  EXPECT_THAT(open_error(path("r.safetensors")), HasSubstr("tensor 'w': data_offsets [8, 4] are reversed"));
  write_raw(path("n.safetensors"), R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", zeros(16));
  EXPECT_THAT(open_error(path("n.safetensors")), HasSubstr("must be two non-negative integers"));
  write_raw(path("t.safetensors"), R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", zeros(16));
  EXPECT_THAT(open_error(path("t.safetensors")), HasSubstr("data_offsets is not an array of two integers"));
}

TEST_F(SafeTensorsTest, RejectsOverlappingTensors) {
  write_raw(path("ov.safetensors"),
            R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})",
            zeros(24));
  EXPECT_THAT(open_error(path("ov.safetensors")),
              HasSubstr("ov.safetensors: tensors 'a' [0, 16] and 'b' [8, 24] overlap"));
  // Containment is an overlap too; empty tensors occupy no bytes.
  write_raw(path("in.safetensors"),
            R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
            R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})",
            zeros(16));
  EXPECT_THAT(open_error(path("in.safetensors")), HasSubstr("tensors 'a' [0, 16] and 'b' [4, 8] overlap"));
}

TEST_F(SafeTensorsTest, RejectsWrongByteCount) {
  write_raw(path("model.safetensors"),
            R"({"model.norm.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})", zeros(16));
  EXPECT_THAT(open_error(path("model.safetensors")),
              HasSubstr("model.safetensors: tensor 'model.norm.weight': data_offsets [0, 12] give 12 bytes but "
                        "F32 [4] needs 16"));
  write_raw(path("b.safetensors"), R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,16]}})", zeros(16));
  EXPECT_THAT(open_error(path("b.safetensors")), HasSubstr("give 16 bytes but BF16 [2, 3] needs 12"));
  // A shape whose byte size overflows 64 bits.
  write_raw(path("x.safetensors"),
            R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", zeros(16));
  EXPECT_THAT(open_error(path("x.safetensors")), HasSubstr("is too large"));
}

TEST_F(SafeTensorsTest, RejectsUnknownDtype) {
  write_raw(path("d.safetensors"), R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", zeros(16));
  EXPECT_THAT(open_error(path("d.safetensors")),
              HasSubstr("d.safetensors: tensor 'w': unsupported dtype 'F64' (supported: F32, BF16, F16, I32)"));
  write_raw(path("n.safetensors"), R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", zeros(8));
  EXPECT_THAT(open_error(path("n.safetensors")), HasSubstr("tensor 'w': dtype is not a string (got number)"));
  write_raw(path("m.safetensors"), R"({"w":{"shape":[2],"data_offsets":[0,8]}})", zeros(8));
  EXPECT_THAT(open_error(path("m.safetensors")), HasSubstr("tensor 'w': missing 'dtype'"));
}

TEST_F(SafeTensorsTest, RejectsBadShape) {
  write_raw(path("neg.safetensors"), R"({"w":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]}})", zeros(8));
  EXPECT_THAT(open_error(path("neg.safetensors")), HasSubstr("tensor 'w': shape [2,-1] has a negative entry -1"));
  write_raw(path("frac.safetensors"), R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", zeros(8));
  EXPECT_THAT(open_error(path("frac.safetensors")), HasSubstr("tensor 'w': shape [2.5] has a non-integer entry 2.5"));
  write_raw(path("str.safetensors"), R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", zeros(8));
  EXPECT_THAT(open_error(path("str.safetensors")), HasSubstr("tensor 'w': shape is not an array (got string)"));
}

TEST_F(SafeTensorsTest, RejectsDuplicateNames) {
  write_raw(path("dup.safetensors"),
            R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            zeros(8));
  EXPECT_THAT(open_error(path("dup.safetensors")), HasSubstr("dup.safetensors: duplicate key 'w' in the header"));
  write_raw(path("dup2.safetensors"), R"({"w":{"dtype":"F32","dtype":"F16","shape":[1],"data_offsets":[0,4]}})",
            zeros(4));
  EXPECT_THAT(open_error(path("dup2.safetensors")), HasSubstr("duplicate key 'dtype' inside entry 'w'"));
}

TEST_F(SafeTensorsTest, RejectsBadMetadata) {
  write_raw(path("m.safetensors"), R"({"__metadata__":{"format":1}})", "");
  EXPECT_THAT(open_error(path("m.safetensors")), HasSubstr("__metadata__ entry 'format' is not a string"));
}

// ---- file helpers used by the writer ------------------------------------------------------

TEST_F(SafeTensorsTest, FileUtil) {
  EXPECT_EQ(path_join("a", "b"), "a/b");
  EXPECT_EQ(path_join("a/", "b"), "a/b");
  EXPECT_EQ(path_join("", "b"), "b");
  EXPECT_EQ(path_join("a", "/abs"), "/abs");
  EXPECT_EQ(path_join("a", ""), "a");

  const std::string deep = path("x/y/z");
  make_dirs(deep);
  EXPECT_TRUE(dir_exists(deep));
  EXPECT_FALSE(file_exists(deep));
  make_dirs(deep);  // already there: fine
  const std::string f = path_join(deep, "f.txt");
  write_file_atomic(f, "one");
  write_file_atomic(f, "two, longer");  // replaces
  EXPECT_TRUE(file_exists(f));
  EXPECT_EQ(read_text_file(f, "test file"), "two, longer");
  EXPECT_THAT(error_of([&] { make_dirs(path_join(f, "sub")); }), HasSubstr("cannot create directory '" + f + "/sub'"));
  EXPECT_THAT(error_of([&] { read_text_file(path("none.txt"), "pairs file"); }),
              HasSubstr("cannot read pairs file '" + path("none.txt") + "': No such file or directory"));
  EXPECT_THAT(error_of([&] { read_text_file(deep, "pairs file"); }), HasSubstr("it is a directory"));
  EXPECT_THAT(error_of([&] { write_file_atomic(deep, "x"); }), HasSubstr("cannot write '" + deep + "'"));
  int entries = 0;  // the failed write left no temp file beside the target
  for (auto& e : std::filesystem::directory_iterator(path("x/y"))) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

// ---- malformed indexes --------------------------------------------------------------------

class ShardedErrors : public SafeTensorsTest {
 protected:
  void SetUp() override {
    SafeTensorsTest::SetUp();
    write_safetensors(path("s1.safetensors"), {tensor_f32("a", {1}, {1}), tensor_f32("b", {1}, {2})});
    write_safetensors(path("s2.safetensors"), {tensor_f32("c", {1}, {3})});
  }
  std::string index_error(const std::string& index) {
    write_bytes(path("model.safetensors.index.json"), index);
    return error_of([&] { SafeTensors::open_dir(dir_); });
  }
};

TEST_F(ShardedErrors, IndexNamesMissingShard) {
  EXPECT_THAT(index_error(R"({"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s3.safetensors"}})"),
              HasSubstr("model.safetensors.index.json: shard 's3.safetensors' (holding tensor 'c') does not exist"));
}

TEST_F(ShardedErrors, IndexNamesTensorMissingFromItsShard) {
  EXPECT_THAT(index_error(R"({"weight_map": {"a": "s1.safetensors", "c": "s1.safetensors"}})"),
              HasSubstr("tensor 'c' is mapped to shard 's1.safetensors', which does not contain it"));
  EXPECT_THAT(index_error(R"({"weight_map": {"a": "s1.safetensors", "zz": "s2.safetensors"}})"),
              HasSubstr("tensor 'zz' is mapped to shard 's2.safetensors', which does not contain it"));
}

TEST_F(ShardedErrors, TensorInTwoShards) {
  write_safetensors(path("s3.safetensors"), {tensor_f32("a", {1}, {9})});
  EXPECT_THAT(index_error(R"({"weight_map": {"a": "s1.safetensors", "c": "s3.safetensors"}})"),
              HasSubstr("tensor 'a' is in two shards: 's1.safetensors' and 's3.safetensors'"));
}

TEST_F(ShardedErrors, MalformedIndex) {
  EXPECT_THAT(index_error("{not json"), HasSubstr("model.safetensors.index.json: index is not valid JSON"));
  EXPECT_THAT(index_error(R"({"metadata": {}})"), HasSubstr("missing 'weight_map'"));
  EXPECT_THAT(index_error(R"({"weight_map": ["s1.safetensors"]})"), HasSubstr("'weight_map' is not a JSON object"));
  EXPECT_THAT(index_error(R"({"weight_map": {"a": 1}})"), HasSubstr("weight_map entry 'a' is not a file name"));
  EXPECT_THAT(index_error(R"({"weight_map": {"a": "s1.safetensors", "a": "s2.safetensors"}})"),
              HasSubstr("duplicate key 'a' inside entry 'weight_map'"));
  EXPECT_THAT(index_error(R"({"weight_map": {"a": "../s1.safetensors"}})"), HasSubstr("not a file name inside"));
}

TEST_F(ShardedErrors, BadShardIsNamed) {
  write_bytes(path("s2.safetensors"), "short");
  EXPECT_THAT(index_error(R"({"weight_map": {"a": "s1.safetensors", "c": "s2.safetensors"}})"),
              HasSubstr("s2.safetensors: file is 5 bytes"));
}

}  // namespace
}  // namespace phi3
