// phi3patch._core: the engine in-process (nanobind). A loaded model (Engine) serves every
// call; the work runs with the GIL released, polls Ctrl-C (PyErr_CheckSignals) between passes
// and sweep steps, and reports progress through a Python callable. Engine errors become
// phi3patch.Error (a ValueError and a RuntimeError), out of memory phi3patch.OutOfMemoryError,
// an interrupt KeyboardInterrupt; the model stays usable after any of them. Arrays are copies
// owned by numpy, except the activations of run_with_cache: read-only views of the forward
// pass's buffers (CPU: numpy; CUDA: DLPack), which keep that pass and the model alive.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <atomic>
#include <memory>
#include <mutex>

#include "model/batch.h"
#include "model/forward.h"
#include "model/model.h"
#include "patching/circuit_graph.h"
#include "patching/circuit_run.h"
#include "patching/experiment.h"
#include "patching/out_dir.h"
#include "patching/report.h"
#include "runtime/backend.h"
#include "runtime/comm.h"
#include "runtime/error.h"
#include "runtime/file_util.h"
#include "runtime/hf_cache.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace phi3 {
namespace {

PyObject* g_error = nullptr;  // phi3patch.Error
PyObject* g_oom = nullptr;    // phi3patch.OutOfMemoryError

// The backend and the model; shared by the Engine and every array viewing its memory.
// Members are destroyed in reverse order: the model (its weights freed through the backend) first.
struct Core {
  std::unique_ptr<Backend> be;
  std::unique_ptr<Model> m;
  std::mutex busy;  // one computation at a time on a model
};

// The Python side of one call: progress lines and Ctrl-C.
struct CallContext {
  nb::object progress;  // callable(str) or None
  std::atomic<bool> interrupted{false};
  std::string callback_error;

  bool should_stop() {
    if (interrupted) return true;
    nb::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {  // the SIGINT handler raised KeyboardInterrupt
      PyErr_Clear();
      interrupted = true;
    }
    return interrupted;
  }
  void log(const std::string& line) {
    if (should_stop()) throw Error("interrupted (KeyboardInterrupt)");
    if (progress.is_none()) return;
    nb::gil_scoped_acquire gil;
    try {
      progress(line);
    } catch (nb::python_error& e) {
      if (e.matches(PyExc_KeyboardInterrupt)) {
        interrupted = true;
      } else {
        callback_error = e.what();
      }
      throw Error("the progress callback raised: " + std::string(e.what()));
    }
  }
};

// Runs work with the GIL released; an interrupt becomes KeyboardInterrupt.
template <typename Fn>
void run_released(Core& core, CallContext& ctx, Fn&& work) {
  std::exception_ptr err;
  {
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(core.busy);
    try {
      work();
    } catch (...) {
      err = std::current_exception();
    }
  }
  if (!err) return;
  if (ctx.interrupted) {
    PyErr_SetString(PyExc_KeyboardInterrupt, "phi3patch: interrupted; the model is still loaded and usable");
    throw nb::python_error();
  }
  std::rethrow_exception(err);
}

template <typename T>
nb::ndarray<nb::numpy, T> owned_array(std::vector<T>&& v, std::vector<size_t> shape) {
  auto* heap = new std::vector<T>(std::move(v));
  nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(heap->data(), shape.size(), shape.data(), owner);
}

struct Engine {
  std::shared_ptr<Core> core;
  std::string dir;
};

Engine load(const std::string& dir, const std::string& device, bool fp32) {
  Engine e;
  e.dir = dir;
  e.core = std::make_shared<Core>();
  nb::gil_scoped_release release;
  e.core->be = make_backend(device, fp32);
  e.core->m = load_model(*e.core->be, dir);
  return e;
}

// Options of `run` that the Python layer fills from keywords (names as the CLI's).
struct PatchOptions {
  std::vector<std::string> hooks;
  bool attribution = true, activation = true, atp_star = false;
  int verify_top = 0;
  bool noising = false;
  std::string metric = "logit-diff";  // --metric
  int add_bos = -1;  // -1: the tokenizer's default
  bool answer_first_token = false;
  int batch = 0;
  bool naive = false;
  double mem_budget_mb = 0;
  bool check_finite = true;
  std::string positions;              // --positions ("" : every position)
  std::string recompute = "auto";     // --recompute
  std::string layers;                 // --layers ("" : every layer)
  bool mix = true;                    // false: --no-mix
  bool auto_methods = false;          // verify_top without methods: the engine picks AtP* / AtP
};

bool bos_choice(const Model& m, int add_bos) {
  if (add_bos < 0) return m.tok.bos_by_default();
  if (add_bos && m.tok.bos_id() < 0)
    throw Error("bos=True: the " + m.tok.kind() + " tokenizer has no BOS token");
  return add_bos != 0;
}

std::shared_ptr<ExperimentResult> patch(Engine& e, const std::string& pairs_text, const std::string& pairs_name,
                                        const PatchOptions& po, nb::object progress, const std::string& checkpoint_out,
                                        bool resume) {
  CallContext ctx;
  ctx.progress = progress;
  ExperimentOptions opt;
  opt.pairs_file = pairs_name;
  opt.pairs_text = pairs_text;
  opt.hooks.clear();
  for (const auto& h : po.hooks) opt.hooks.push_back(parse_hook(h));
  if (opt.hooks.empty()) throw Error("hooks: no hook given");
  opt.attribution = po.attribution;
  opt.activation = po.activation;
  opt.atp_star = po.atp_star;
  opt.verify_top = po.verify_top;
  opt.noising = po.noising;
  opt.metric = parse_metric(po.metric);
  opt.answer_first_token = po.answer_first_token;
  opt.batch_pairs = po.batch;
  opt.naive = po.naive;
  opt.mem_budget = static_cast<size_t>(po.mem_budget_mb * 1024 * 1024);
  opt.check_finite = po.check_finite;
  opt.positions = po.positions;
  opt.recompute = po.recompute;
  opt.layers = po.layers;
  opt.mix = po.mix;
  opt.auto_methods = po.auto_methods;
  opt.add_bos = bos_choice(*e.core->m, po.add_bos);
  opt.checkpoint_out = checkpoint_out;
  opt.resume = resume;
  check_methods(opt);
  opt.should_stop = [&ctx] { return ctx.should_stop(); };
  opt.log = [&ctx](const std::string& s) { ctx.log(s); };
  auto R = std::make_shared<ExperimentResult>();
  run_released(*e.core, ctx, [&] { *R = run_experiment(*e.core->be, *e.core->m, opt, Comm::self()); });
  R->model_dir = e.dir;
  return R;
}

struct CircuitArgs {
  bool ig = true;
  int ig_steps = 5;
  bool noising = false;
  int add_bos = -1;
  bool answer_first_token = false;
  int64_t edges = -1;
  std::vector<int64_t> grid;
  double target = 0.8;
  bool greedy = false;
  double mem_budget_mb = 0;
  int batch = 0;
  bool mix = true;
};

std::shared_ptr<CircuitRunResult> circuit(Engine& e, const std::string& pairs_text, const std::string& pairs_name,
                                          const CircuitArgs& a, nb::object progress) {
  CallContext ctx;
  ctx.progress = progress;
  CircuitOptions opt;
  opt.pairs_file = pairs_name;
  opt.pairs_text = pairs_text;
  opt.ig = a.ig;
  opt.ig_steps = a.ig_steps;
  opt.noising = a.noising;
  opt.add_bos = bos_choice(*e.core->m, a.add_bos);
  opt.answer_first_token = a.answer_first_token;
  opt.edges = a.edges;
  opt.grid = a.grid;
  opt.target = a.target;
  opt.greedy = a.greedy;
  opt.mem_budget = static_cast<size_t>(a.mem_budget_mb * 1024 * 1024);
  opt.batch_pairs = a.batch;
  opt.mix = a.mix;
  opt.log = [&ctx](const std::string& s) { ctx.log(s); };
  auto R = std::make_shared<CircuitRunResult>();
  run_released(*e.core, ctx, [&] { *R = run_circuit(*e.core->be, *e.core->m, opt, Comm::self()); });
  return R;
}

// One forward pass kept alive by the arrays that view it; `s` is destroyed (freed through
// core's backend) before `core` is released.
struct Cache {
  std::shared_ptr<Core> core;
  ForwardState s;
};

Batch prompt_batch(const Model& m, const std::vector<std::string>& prompts, bool bos) {
  if (prompts.empty()) throw Error("prompts: expected at least one prompt");
  std::vector<std::vector<int>> rows;
  for (size_t i = 0; i < prompts.size(); ++i) {
    rows.push_back(m.tok.encode(prompts[i], bos));
    if (rows.back().empty()) throw Error("prompts[" + std::to_string(i) + "]: no tokens");
    if (static_cast<int>(rows.back().size()) > m.cfg.max_position_embeddings)
      throw Error("prompts[" + std::to_string(i) + "]: " + std::to_string(rows.back().size()) +
                  " tokens, more than the model's context of " + std::to_string(m.cfg.max_position_embeddings));
  }
  const int pad = m.cfg.pad_token_id;
  return make_batch(rows, pad);
}

// A strided read-only view of one cached activation (shape as TensorView, rows row_stride apart).
nb::object view_of(const std::shared_ptr<Cache>& c, const TensorView& v) {
  std::vector<size_t> shape(v.shape.begin(), v.shape.end());
  std::vector<int64_t> strides(shape.size());
  // The trailing dims make one row (contiguous); the leading ones index rows row_stride apart.
  int64_t inner = 1;
  int d = static_cast<int>(shape.size()) - 1;
  for (; d >= 0 && inner < v.row_width; --d) {
    strides[d] = inner;
    inner *= static_cast<int64_t>(shape[d]);
  }
  int64_t outer = v.row_stride;
  for (; d >= 0; --d) {
    strides[d] = outer;
    outer *= static_cast<int64_t>(shape[d]);
  }
  auto* keep = new std::shared_ptr<Cache>(c);
  nb::capsule owner(keep, [](void* p) noexcept { delete static_cast<std::shared_ptr<Cache>*>(p); });
  if (v.device == DeviceKind::CPU) {
    return nb::cast(nb::ndarray<nb::numpy, const float>(v.data, shape.size(), shape.data(), owner, strides.data()));
  }
  int device_id = 0;
  return nb::cast(nb::ndarray<const float>(v.data, shape.size(), shape.data(), owner, strides.data(),
                                           nb::dtype<float>(), nb::device::cuda::value, device_id));
}

nb::dict run_with_cache(Engine& e, const std::vector<std::string>& prompts, const std::vector<std::string>& names,
                        int add_bos) {
  const Model& m = *e.core->m;
  auto c = std::make_shared<Cache>();
  c->core = e.core;
  const bool bos = bos_choice(m, add_bos);
  Batch b = prompt_batch(m, prompts, bos);
  ForwardOptions fo;
  fo.keep_pattern = false;
  fo.keep_mlp_post = false;
  for (const auto& n : names) {
    if (n.find("hook_pattern") != std::string::npos) fo.keep_pattern = true;
    if (n.find("mlp.hook_post") != std::string::npos) fo.keep_mlp_post = true;
  }
  CallContext ctx;
  ctx.progress = nb::none();
  run_released(*e.core, ctx, [&] { c->s = forward(*e.core->be, m, b, fo); });
  nb::dict out;
  out["logits"] = view_of(c, c->s.activation(*e.core->be, m, "logits"));
  for (const auto& n : names) out[n.c_str()] = view_of(c, c->s.activation(*e.core->be, m, n));
  // Where the prompts start (left padding) and their tokens, for the caller's labels.
  out["pad"] = owned_array(std::vector<int32_t>(b.pad.begin(), b.pad.end()), {size_t(b.B)});
  out["tokens"] = owned_array(std::vector<int32_t>(b.tokens.begin(), b.tokens.end()), {size_t(b.B), size_t(b.T)});
  return out;
}

nb::ndarray<nb::numpy, float> logit_diffs(Engine& e, const std::vector<std::string>& prompts,
                                          const std::vector<std::string>& answers,
                                          const std::vector<std::string>& others, int add_bos) {
  const Model& m = *e.core->m;
  if (prompts.size() != answers.size() || prompts.size() != others.size())
    throw Error("logit_diff: " + std::to_string(prompts.size()) + " prompts, " + std::to_string(answers.size()) +
                " answers and " + std::to_string(others.size()) + " other answers: expected as many of each");
  if (prompts.empty()) throw Error("logit_diff: expected at least one prompt");
  std::vector<PromptPair> pairs;
  for (size_t i = 0; i < prompts.size(); ++i) pairs.push_back(PromptPair::text(prompts[i], prompts[i], answers[i], others[i]));
  const bool bos = bos_choice(m, add_bos);
  check_pairs(pairs, m.tok, m.cfg.max_position_embeddings, "logit_diff", bos, m.cfg.vocab_size);
  PairBatch pb = make_pair_batch(pairs, m.tok, m.cfg.pad_token_id, m.cfg.max_position_embeddings, 0, bos);
  std::vector<float> rows;
  CallContext ctx;
  ctx.progress = nb::none();
  run_released(*e.core, ctx, [&] {
    ForwardOptions fo;
    fo.keep_pattern = false;
    ForwardState s = forward(*e.core->be, m, pb.clean, fo);
    rows = logit_diff(*e.core->be, m, s, pb.answer, pb.other).per_row;
  });
  std::vector<float> out;  // clean rows are [p0, p0 swapped, p1, ...]: each prompt's own answer order
  for (size_t i = 0; i < prompts.size(); ++i) out.push_back(rows[2 * i]);
  return owned_array(std::move(out), {prompts.size()});
}

const MatrixResult& result_at(const ExperimentResult& R, size_t i) {
  if (i >= R.results.size())
    throw nb::index_error(("result " + std::to_string(i) + " of " + std::to_string(R.results.size())).c_str());
  return R.results[i];
}

}  // namespace
}  // namespace phi3

NB_MODULE(_core, mod) {
  using namespace phi3;
  mod.doc() = "phi3patch engine (C++/CUDA) bindings; use the phi3patch package, not this module";

  nb::object value_error = nb::borrow(PyExc_ValueError), runtime_error = nb::borrow(PyExc_RuntimeError);
  nb::tuple bases = nb::make_tuple(value_error, runtime_error);
  g_error = PyErr_NewExceptionWithDoc("phi3patch.Error",
                                      "An engine error (bad input, a model that cannot load, an impossible option): "
                                      "the message names the thing, as the command line's does.",
                                      bases.ptr(), nullptr);
  nb::tuple oom_bases = nb::make_tuple(nb::handle(g_error), nb::borrow(PyExc_MemoryError));
  g_oom = PyErr_NewExceptionWithDoc("phi3patch.OutOfMemoryError",
                                    "The device (or host) memory the work needs is not there; the message says what "
                                    "lowers the need.",
                                    oom_bases.ptr(), nullptr);
  mod.attr("Error") = nb::handle(g_error);
  mod.attr("OutOfMemoryError") = nb::handle(g_oom);
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const OutOfMemory& e) {
      PyErr_SetString(g_oom, e.what());
    } catch (const JobFailed& e) {
      PyErr_SetString(e.exit_code == 3 ? g_oom : g_error, e.what());
    } catch (const Error& e) {
      PyErr_SetString(g_error, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(g_oom, "out of host memory; lower mem_budget or batch, or use a smaller model");
    }
  });

  mod.def("resolve_model_dir", &resolve_model_dir, "value"_a,
          "The checkpoint directory of a directory, a hub id 'org/name[@revision]' or a cache repo folder, from the "
          "local Hugging Face cache (as the command line's --model).");
  mod.def("source_dir", [] { return std::string(PHI3_SOURCE_DIR); }, "The source tree this module was built from.");
  mod.def("hook_names", [] {
    std::vector<std::string> out;
    for (Hook h : all_hooks()) out.push_back(hook_name(h));
    return out;
  });
  mod.def("with_cuda", [] {
#ifdef PHI3_WITH_CUDA
    return true;
#else
    return false;
#endif
  });

  nb::class_<Engine>(mod, "Engine")
      .def_prop_ro("dir", [](const Engine& e) { return e.dir; })
      .def_prop_ro("device", [](const Engine& e) { return e.core->be->name(); })
      .def_prop_ro("on_cuda", [](const Engine& e) { return e.core->be->kind() == DeviceKind::CUDA; })
      .def_prop_ro("weights_bytes", [](const Engine& e) { return static_cast<int64_t>(e.core->m->w.bytes); })
      .def_prop_ro("architecture", [](const Engine& e) { return e.core->m->cfg.architecture; })
      .def_prop_ro("family", [](const Engine& e) { return e.core->m->cfg.family; })
      .def_prop_ro("n_layers", [](const Engine& e) { return e.core->m->cfg.num_hidden_layers; })
      .def_prop_ro("n_heads", [](const Engine& e) { return e.core->m->cfg.num_attention_heads; })
      .def_prop_ro("n_kv_heads", [](const Engine& e) { return e.core->m->cfg.num_key_value_heads; })
      .def_prop_ro("d_model", [](const Engine& e) { return e.core->m->cfg.hidden_size; })
      .def_prop_ro("d_head", [](const Engine& e) { return e.core->m->cfg.head_dim; })
      .def_prop_ro("d_mlp", [](const Engine& e) { return e.core->m->cfg.intermediate_size; })
      .def_prop_ro("vocab_size", [](const Engine& e) { return e.core->m->cfg.vocab_size; })
      .def_prop_ro("n_ctx", [](const Engine& e) { return e.core->m->cfg.max_position_embeddings; })
      .def_prop_ro("pad_token_id", [](const Engine& e) { return e.core->m->cfg.pad_token_id; })
      .def_prop_ro("bos_id", [](const Engine& e) { return e.core->m->tok.bos_id(); })
      .def_prop_ro("bos_by_default", [](const Engine& e) { return e.core->m->tok.bos_by_default(); })
      .def_prop_ro("tokenizer_kind", [](const Engine& e) { return e.core->m->tok.kind(); })
      .def(
          "tokenize",
          [](const Engine& e, const std::string& text, int add_bos) {
            const Model& m = *e.core->m;
            std::vector<int> ids = m.tok.encode(text, bos_choice(m, add_bos));
            std::vector<std::string> pieces;
            for (int id : ids) pieces.push_back(m.tok.piece(id));
            return std::make_tuple(ids, pieces, m.tok.decode(ids));
          },
          "text"_a, "add_bos"_a = -1)
      .def("label", [](const Engine& e, int id) { return e.core->m->tok.label(id); }, "id"_a)
      .def(
          "attn_params",
          [](const Engine& e, int layer) {
            const Model& m = *e.core->m;
            if (layer < 0 || layer >= m.cfg.num_hidden_layers)
              throw Error("layer " + std::to_string(layer) + ": the model has " +
                          std::to_string(m.cfg.num_hidden_layers) + " layers");
            const AttnParams ap = attention_params(m, 1, layer);
            return std::make_tuple(ap.scale, ap.softcap, ap.window);
          },
          "layer"_a, "(score scale, soft-cap (0: none), sliding window (0: none)) of a layer's attention.")
      .def_prop_ro("rms_norm_eps", [](const Engine& e) { return e.core->m->cfg.rms_norm_eps; })
      .def(
          "answer_token", [](const Engine& e, const std::string& word) { return e.core->m->tok.answer_token(word); },
          "word"_a, "The token id an answer word is compared by (the word after a space); an error when it is not one token.")
      .def("decode", [](const Engine& e, const std::vector<int>& ids) { return e.core->m->tok.decode(ids); }, "ids"_a);
  mod.def("load", &load, "dir"_a, "device"_a = "auto", "fp32"_a = false);

  nb::class_<PatchOptions>(mod, "PatchOptions")
      .def(nb::init<>())
      .def_rw("hooks", &PatchOptions::hooks)
      .def_rw("attribution", &PatchOptions::attribution)
      .def_rw("activation", &PatchOptions::activation)
      .def_rw("atp_star", &PatchOptions::atp_star)
      .def_rw("verify_top", &PatchOptions::verify_top)
      .def_rw("noising", &PatchOptions::noising)
      .def_rw("metric", &PatchOptions::metric)
      .def_rw("positions", &PatchOptions::positions)
      .def_rw("recompute", &PatchOptions::recompute)
      .def_rw("layers", &PatchOptions::layers)
      .def_rw("mix", &PatchOptions::mix)
      .def_rw("auto_methods", &PatchOptions::auto_methods)
      .def_rw("add_bos", &PatchOptions::add_bos)
      .def_rw("answer_first_token", &PatchOptions::answer_first_token)
      .def_rw("batch", &PatchOptions::batch)
      .def_rw("naive", &PatchOptions::naive)
      .def_rw("mem_budget_mb", &PatchOptions::mem_budget_mb)
      .def_rw("check_finite", &PatchOptions::check_finite);

  nb::class_<ExperimentResult>(mod, "ExperimentResult")
      .def("json", [](const ExperimentResult& R) { return results_json(R); }, "The text of results.json.")
      .def(
          "save",
          [](const ExperimentResult& R, const std::string& dir) {
            make_dirs(dir);
            return write_report(R, dir);
          },
          "dir"_a, "Writes the command line's files (atomically); returns their paths.")
      .def_prop_ro("count", [](const ExperimentResult& R) { return R.results.size(); })
      .def_prop_ro("wall_seconds", [](const ExperimentResult& R) { return R.wall_seconds; },
                   "Seconds the engine's run took (run_experiment, in C++).")
      .def(
          "batch_rows",
          [](const ExperimentResult& R) {
            // Per prompt row, over all batches: the padded clean / corrupted texts and the top-3
            // tokens at the last position ((piece, id, logit) each), as the CLI prints them.
            using Top = std::vector<std::tuple<std::string, int, float>>;
            auto tops = [](const std::vector<TopToken>& t) {
              Top out;
              for (const auto& x : t) out.emplace_back(x.piece, x.id, x.logit);
              return out;
            };
            std::vector<std::tuple<std::string, std::string, Top, Top>> rows;
            for (const auto& b : R.batches)
              for (size_t i = 0; i < b.clean_padded.size(); ++i)
                rows.emplace_back(b.clean_padded[i], b.corrupted_padded[i], tops(b.clean_top[i]), tops(b.corrupted_top[i]));
            return rows;
          },
          "(clean padded text, corrupted padded text, clean top-3, corrupted top-3) per prompt row.")
      .def("hook", [](const ExperimentResult& R, size_t i) { return hook_name(result_at(R, i).hook); })
      .def("method", [](const ExperimentResult& R, size_t i) { return result_at(R, i).method; })
      .def("rows", [](const ExperimentResult& R, size_t i) { return result_at(R, i).rows; })
      .def("cols", [](const ExperimentResult& R, size_t i) { return result_at(R, i).cols; })
      .def("seconds", [](const ExperimentResult& R, size_t i) { return result_at(R, i).seconds; })
      .def("values",
           [](const ExperimentResult& R, size_t i) {
             const MatrixResult& r = result_at(R, i);
             return owned_array(std::vector<double>(r.values), {r.rows.size(), r.cols.size()});
           })
      .def("per_prompt",
           [](const ExperimentResult& R, size_t i, bool raw) {
             const MatrixResult& r = result_at(R, i);
             const auto& src = raw ? r.per_prompt_ld : r.per_prompt;
             const size_t cells = r.rows.size() * r.cols.size(), P = src.empty() ? 0 : src[0].size();
             if (src.size() != cells) throw Error(r.method + " " + hook_name(r.hook) + ": no per-prompt values");
             std::vector<float> v(cells * P);
             for (size_t c = 0; c < cells; ++c) std::copy(src[c].begin(), src[c].end(), v.begin() + c * P);
             return owned_array(std::move(v), {r.rows.size(), r.cols.size(), P});
           },
           "i"_a, "raw"_a = false);

  nb::class_<CircuitArgs>(mod, "CircuitOptions")
      .def(nb::init<>())
      .def_rw("ig", &CircuitArgs::ig)
      .def_rw("ig_steps", &CircuitArgs::ig_steps)
      .def_rw("noising", &CircuitArgs::noising)
      .def_rw("add_bos", &CircuitArgs::add_bos)
      .def_rw("answer_first_token", &CircuitArgs::answer_first_token)
      .def_rw("edges", &CircuitArgs::edges)
      .def_rw("grid", &CircuitArgs::grid)
      .def_rw("target", &CircuitArgs::target)
      .def_rw("greedy", &CircuitArgs::greedy)
      .def_rw("mem_budget_mb", &CircuitArgs::mem_budget_mb)
      .def_rw("batch", &CircuitArgs::batch)
      .def_rw("mix", &CircuitArgs::mix);

  nb::class_<CircuitRunResult>(mod, "CircuitResult")
      .def("json", [](const CircuitRunResult& r) { return circuit_json(r); }, "The text of circuit.json.")
      .def(
          "save",
          [](const CircuitRunResult& r, const std::string& dir) {
            make_dirs(dir);
            return write_circuit_outputs(r, dir);
          },
          "dir"_a)
      .def("scores",
           [](const CircuitRunResult& r) {
             const CircuitGraph g(r.L, r.H, r.KVH);
             return owned_array(std::vector<float>(r.scores), {size_t(g.n_upstream()), size_t(g.n_downstream())});
           })
      .def("upstream_names",
           [](const CircuitRunResult& r) {
             const CircuitGraph g(r.L, r.H, r.KVH);
             std::vector<std::string> out;
             for (int u = 0; u < g.n_upstream(); ++u) out.push_back(g.upstream_name(u));
             return out;
           })
      .def("downstream_names",
           [](const CircuitRunResult& r) {
             const CircuitGraph g(r.L, r.H, r.KVH);
             std::vector<std::string> out;
             for (int v = 0; v < g.n_downstream(); ++v) out.push_back(g.downstream_name(v));
             return out;
           })
      .def("edge_exists", [](const CircuitRunResult& r) {
        const CircuitGraph g(r.L, r.H, r.KVH);
        std::vector<uint8_t> e(size_t(g.n_upstream()) * g.n_downstream());
        for (int u = 0; u < g.n_upstream(); ++u)
          for (int v = 0; v < g.n_downstream(); ++v) e[size_t(u) * g.n_downstream() + v] = g.has_edge(u, v);
        return owned_array(std::move(e), {size_t(g.n_upstream()), size_t(g.n_downstream())});
      });

  mod.def("patch", &patch, "engine"_a, "pairs_text"_a, "pairs_name"_a, "options"_a, "progress"_a.none(),
          "checkpoint_out"_a = "", "resume"_a = false);
  // The command line's rules for --out: an existing result kept unless force; temp files of a
  // killed write removed by force / resume. Returns the temp files removed.
  mod.def(
      "prepare_out",
      [](const std::string& dir, bool force, bool resume) {
        return prepare_out_dir({dir, "results.json", {"checkpoints", "checkpoints-verify"}, force, resume});
      },
      "dir"_a, "force"_a, "resume"_a);
  mod.def(
      "prepare_circuit_out",
      [](const std::string& dir, bool force) { return prepare_out_dir({dir, "circuit.json", {}, force, false}); },
      "dir"_a, "force"_a);
  mod.def("circuit", &circuit, "engine"_a, "pairs_text"_a, "pairs_name"_a, "options"_a, "progress"_a.none());
  mod.def("run_with_cache", &run_with_cache, "engine"_a, "prompts"_a, "names"_a, "add_bos"_a = -1);
  mod.def("logit_diff", &logit_diffs, "engine"_a, "prompts"_a, "answers"_a, "others"_a, "add_bos"_a = -1);
}
