#include "patching/batch_result.h"

#include <algorithm>
#include <cmath>

#include "patching/work_split.h"
#include "runtime/error.h"

namespace phi3 {

using nlohmann::json;

namespace {
json top_json(const std::vector<TopToken>& t) {
  json a = json::array();
  for (const auto& x : t) a.push_back({{"id", x.id}, {"piece", x.piece}, {"logit", x.logit}});
  return a;
}
std::vector<TopToken> top_from(const json& a) {
  std::vector<TopToken> t;
  for (const auto& x : a) t.push_back({x.at("id").get<int>(), x.at("piece").get<std::string>(), x.at("logit").get<float>()});
  return t;
}
// NaN is not JSON: activation slices carry null there.
json floats(const std::vector<float>& v) {
  json a = json::array();
  for (float x : v) a.push_back(std::isnan(x) ? json(nullptr) : json(x));
  return a;
}
std::vector<float> floats_from(const json& a) {
  std::vector<float> v;
  v.reserve(a.size());
  for (const auto& x : a) v.push_back(x.is_null() ? NAN : x.get<float>());
  return v;
}
json work_json(const SweepWork& w) {
  return {{"fast", w.fast},
          {"patched_runs", w.patched_runs},
          {"skipped_noop", w.skipped_noop},
          {"skipped_causal", w.skipped_causal},
          {"token_layer_evals", w.token_layer_evals},
          {"naive_token_layer_evals", w.naive_token_layer_evals},
          {"chunks", w.chunks},
          {"streams", w.streams},
          {"seconds", w.seconds}};
}
SweepWork work_from(const json& j) {
  SweepWork w;
  w.fast = j.at("fast").get<bool>();
  w.patched_runs = j.at("patched_runs").get<int64_t>();
  w.skipped_noop = j.at("skipped_noop").get<int64_t>();
  w.skipped_causal = j.at("skipped_causal").get<int64_t>();
  w.token_layer_evals = j.at("token_layer_evals").get<int64_t>();
  w.naive_token_layer_evals = j.at("naive_token_layer_evals").get<int64_t>();
  w.chunks = j.at("chunks").get<int>();
  w.streams = j.at("streams").get<int>();
  w.seconds = j.at("seconds").get<double>();
  return w;
}
}  // namespace

json to_json(const BatchResult& r) {
  json j;
  j["batch"] = r.batch;
  if (r.has_summary) {
    const BatchSummary& s = r.summary;
    json cl = json::array(), co = json::array();
    for (const auto& t : s.clean_top) cl.push_back(top_json(t));
    for (const auto& t : s.corrupted_top) co.push_back(top_json(t));
    j["summary"] = {{"clean_prompts", s.clean_prompts},   {"corrupted_prompts", s.corrupted_prompts},
                    {"clean_padded", s.clean_padded},     {"corrupted_padded", s.corrupted_padded},
                    {"clean_tokens", s.clean_tokens},     {"corrupted_tokens", s.corrupted_tokens},
                    {"answer", s.answer},                 {"other", s.other},
                    {"answer_piece", s.answer_piece},     {"other_piece", s.other_piece},
                    {"clean_top", cl},                    {"corrupted_top", co},
                    {"clean_ld_rows", s.clean_ld_rows},   {"corrupted_ld_rows", s.corrupted_ld_rows},
                    {"clean_ld", s.clean_ld},             {"corrupted_ld", s.corrupted_ld}};
    if (!s.clean_m_rows.empty() &&
        (s.clean_m_rows != s.clean_ld_rows || s.corrupted_m_rows != s.corrupted_ld_rows)) {  // --metric
      j["summary"]["clean_m_rows"] = s.clean_m_rows;
      j["summary"]["corrupted_m_rows"] = s.corrupted_m_rows;
      j["summary"]["clean_m"] = s.clean_m;
      j["summary"]["corrupted_m"] = s.corrupted_m;
    }
  }
  json parts = json::array();
  for (const auto& p : r.parts)
    parts.push_back({{"acc", p.acc},
                     {"first", p.first},
                     {"last", p.last},
                     {"seconds", p.seconds},
                     {"work", work_json(p.work)},
                     {"values", floats(p.values)}});
  j["parts"] = parts;
  return j;
}

BatchResult batch_result_from_json(const json& j) {
  try {
    BatchResult r;
    r.batch = j.at("batch").get<int>();
    if (j.contains("summary")) {
      const json& s = j.at("summary");
      BatchSummary& b = r.summary;
      r.has_summary = true;
      s.at("clean_prompts").get_to(b.clean_prompts);
      s.at("corrupted_prompts").get_to(b.corrupted_prompts);
      s.at("clean_padded").get_to(b.clean_padded);
      s.at("corrupted_padded").get_to(b.corrupted_padded);
      s.at("clean_tokens").get_to(b.clean_tokens);
      s.at("corrupted_tokens").get_to(b.corrupted_tokens);
      s.at("answer").get_to(b.answer);
      s.at("other").get_to(b.other);
      s.at("answer_piece").get_to(b.answer_piece);
      s.at("other_piece").get_to(b.other_piece);
      for (const auto& t : s.at("clean_top")) b.clean_top.push_back(top_from(t));
      for (const auto& t : s.at("corrupted_top")) b.corrupted_top.push_back(top_from(t));
      s.at("clean_ld_rows").get_to(b.clean_ld_rows);
      s.at("corrupted_ld_rows").get_to(b.corrupted_ld_rows);
      b.clean_ld = s.at("clean_ld").get<double>();
      b.corrupted_ld = s.at("corrupted_ld").get<double>();
      if (s.contains("clean_m_rows")) {  // another metric than the logit difference
        s.at("clean_m_rows").get_to(b.clean_m_rows);
        s.at("corrupted_m_rows").get_to(b.corrupted_m_rows);
        b.clean_m = s.at("clean_m").get<double>();
        b.corrupted_m = s.at("corrupted_m").get<double>();
      } else {
        b.clean_m_rows = b.clean_ld_rows;
        b.corrupted_m_rows = b.corrupted_ld_rows;
        b.clean_m = b.clean_ld;
        b.corrupted_m = b.corrupted_ld;
      }
      const size_t B = b.answer.size();
      if (b.clean_ld_rows.size() != B || b.corrupted_ld_rows.size() != B || b.other.size() != B ||
          b.clean_m_rows.size() != B || b.corrupted_m_rows.size() != B)
        throw Error("the summary's per-prompt lists differ in length");
    }
    for (const auto& p : j.at("parts")) {
      ResultPart q;
      q.acc = p.at("acc").get<int>();
      q.first = p.at("first").get<int64_t>();
      q.last = p.at("last").get<int64_t>();
      q.seconds = p.at("seconds").get<double>();
      q.work = work_from(p.at("work"));
      q.values = floats_from(p.at("values"));
      r.parts.push_back(std::move(q));
    }
    return r;
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(std::string("malformed batch result: ") + e.what());
  }
}

json to_json(const RankWork& w) {
  return {{"rank", w.rank},
          {"batches", w.batches},
          {"token_layer_evals", w.token_layer_evals},
          {"sweep_token_layer_evals", w.sweep_token_layer_evals},
          {"patched_runs", w.patched_runs},
          {"seconds", w.seconds},
          {"forward_seconds", w.forward_seconds}};
}

RankWork rank_work_from_json(const json& j) {
  RankWork w;
  w.rank = j.at("rank").get<int>();
  w.batches = j.at("batches").get<int>();
  w.token_layer_evals = j.at("token_layer_evals").get<int64_t>();
  w.sweep_token_layer_evals = j.at("sweep_token_layer_evals").get<int64_t>();
  w.patched_runs = j.at("patched_runs").get<int64_t>();
  w.seconds = j.at("seconds").get<double>();
  w.forward_seconds = j.at("forward_seconds").get<double>();
  return w;
}

json ranks_summary(const std::vector<RankWork>& ranks) {
  json list = json::array();
  std::vector<double> evals, secs;
  for (const auto& w : ranks) {
    list.push_back(to_json(w));
    evals.push_back(static_cast<double>(w.token_layer_evals));
    secs.push_back(w.seconds);
  }
  return {{"ranks", list}, {"imbalance_token_layer_evals", imbalance(evals)}, {"imbalance_seconds", imbalance(secs)}};
}

BatchResult merge_parts(std::vector<BatchResult> pieces, int n_accs, const std::vector<int64_t>& n_targets, int B) {
  BatchResult out;
  out.parts.resize(n_accs);
  std::vector<std::vector<char>> covered(n_accs);
  std::vector<bool> seen(n_accs, false);
  for (auto& piece : pieces) {
    if (out.batch < 0) out.batch = piece.batch;
    if (piece.batch != out.batch) throw Error("merging results of different batches");
    if (piece.has_summary && !out.has_summary) {
      out.has_summary = true;
      out.summary = std::move(piece.summary);
    }
    for (auto& p : piece.parts) {
      if (p.acc < 0 || p.acc >= n_accs) throw Error("batch result names an unknown hook/method");
      ResultPart& q = out.parts[p.acc];
      q.acc = p.acc;
      const bool activation = n_targets[p.acc] > 0;
      if (!activation) {  // attribution: whole
        if (seen[p.acc]) throw Error("attribution of one hook computed twice");
        q = std::move(p);
        seen[p.acc] = true;
        continue;
      }
      const int64_t n = n_targets[p.acc];
      if (!seen[p.acc]) {
        q.values.assign(size_t(n) * B, NAN);
        covered[p.acc].assign(n, 0);
        q.first = 0;
        q.last = n;
        q.work = SweepWork{};
        q.work.fast = p.work.fast;
        q.work.streams = 0;
        seen[p.acc] = true;
      }
      if (p.values.size() != size_t(n) * B || p.first < 0 || p.last > n)
        throw Error("activation slice of the wrong size");
      for (int64_t i = p.first; i < p.last; ++i) {
        if (covered[p.acc][i]) throw Error("a patch target was computed twice");
        covered[p.acc][i] = 1;
        std::copy(p.values.begin() + i * B, p.values.begin() + (i + 1) * B, q.values.begin() + i * B);
      }
      q.work += p.work;
      q.seconds += p.seconds;
    }
  }
  for (int a = 0; a < n_accs; ++a) {
    if (!seen[a]) throw Error("no result for hook/method " + std::to_string(a));
    if (n_targets[a] > 0)
      for (char c : covered[a])
        if (!c) throw Error("a patch target was computed by no rank");
  }
  return out;
}

}  // namespace phi3
