// sdpa._core: the nanobind bindings of sdpa::forward and sdpa::backward.
//
// Arrays arrive as CPU views of any strides (DLPack or the buffer protocol: nothing is copied) and
// become sdpa::Tensor views as they are. Torch-style argument handling (ranks other than 4, dtype
// conversion, enable_gqa, the mask's two meanings) lives in python/sdpa/_attention.py; every shape
// and value check is the library's own validate(), whose sdpa::Error arrives as ValueError.
// The GIL is released while the kernels run.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "sdpa/sdpa.hpp"

namespace nb = nanobind;

namespace {

using Input = nb::ndarray<nb::ro, nb::device::cpu>;    // read-only view, any dtype and strides
using Output = nb::ndarray<nb::device::cpu>;           // writable view, any dtype and strides
using Lengths = nb::ndarray<const std::int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

sdpa::DType dtype_of(nb::dlpack::dtype dtype, const std::string& name) {
  if (dtype == nb::dtype<float>()) return sdpa::DType::f32;
  if (dtype == nb::dtype<double>()) return sdpa::DType::f64;
  if (dtype == nb::dtype<bool>()) return sdpa::DType::boolean;
  if (dtype == nb::dtype<std::int32_t>()) return sdpa::DType::i32;
  if (dtype == nb::dtype<std::int64_t>()) return sdpa::DType::i64;
  // 16-bit floats: IEEE half as such; bfloat16 as DLPack's bfloat code or, as the Python layer
  // passes ml_dtypes.bfloat16 arrays (which NumPy cannot export), as uint16 bit patterns.
  const auto code = static_cast<nb::dlpack::dtype_code>(dtype.code);
  if (dtype.bits == 16 && dtype.lanes == 1) {
    if (code == nb::dlpack::dtype_code::Float) return sdpa::DType::f16;
    if (code == nb::dlpack::dtype_code::Bfloat) return sdpa::DType::bf16;
    if (code == nb::dlpack::dtype_code::UInt) return sdpa::DType::bf16;
  }
  throw nb::type_error((name + ": unsupported dtype (code " + std::to_string(dtype.code) +
                        ", " + std::to_string(dtype.bits) + " bits); expected float32, float16 "
                        "or bfloat16")
                           .c_str());
}

// The view of an array: same pointer, shape and element strides.
template <typename Array>
sdpa::Tensor tensor_of(const Array& array, const std::string& name) {
  if (array.ndim() > 4)
    throw nb::value_error(
        (name + ".ndim = " + std::to_string(array.ndim()) + ": expected at most 4").c_str());
  sdpa::Tensor tensor;
  tensor.data = const_cast<void*>(static_cast<const void*>(array.data()));
  tensor.dtype = dtype_of(array.dtype(), name);
  tensor.rank = static_cast<int>(array.ndim());
  for (int d = 0; d < tensor.rank; ++d) {
    tensor.shape[d] = static_cast<std::int64_t>(array.shape(d));
    tensor.stride[d] = array.stride(d);
  }
  return tensor;
}

std::optional<sdpa::Tensor> optional_tensor(const std::optional<Input>& array, const char* name) {
  if (!array) return std::nullopt;
  return tensor_of(*array, name);
}

std::span<const std::int32_t> span_of(const std::optional<Lengths>& lengths) {
  if (!lengths) return {};
  return {lengths->data(), lengths->shape(0)};
}

sdpa::Causal causal_of(const std::string& causal) {
  if (causal == "none") return sdpa::Causal::none;
  if (causal == "top_left") return sdpa::Causal::top_left;
  if (causal == "bottom_right") return sdpa::Causal::bottom_right;
  throw nb::value_error(
      ("causal = '" + causal + "': expected 'none', 'top_left' or 'bottom_right'").c_str());
}

sdpa::Isa isa_of(const std::string& isa) {
  if (isa == "auto") return sdpa::Isa::automatic;
  if (isa == "scalar") return sdpa::Isa::scalar;
  if (isa == "avx2") return sdpa::Isa::avx2;
  if (isa == "avx512") return sdpa::Isa::avx512;
  throw nb::value_error(
      ("isa = '" + isa + "': expected 'auto', 'scalar', 'avx2' or 'avx512'").c_str());
}

// The options every call shares. The arrays it points into (mask, bias, lengths) must outlive it.
sdpa::Options options_of(const std::optional<Input>& mask, const std::optional<Input>& bias,
                         std::optional<float> scale, const std::string& causal,
                         std::optional<std::pair<std::int64_t, std::int64_t>> window,
                         const std::optional<Lengths>& key_lengths,
                         const std::optional<Lengths>& query_lengths, int threads,
                         const std::string& isa, float softcap, const std::optional<Input>& sinks) {
  sdpa::Options options;
  options.scale = scale;
  options.softcap = softcap;
  options.sinks = optional_tensor(sinks, "sinks");
  options.causal = causal_of(causal);
  options.mask = optional_tensor(mask, "mask");
  options.bias = optional_tensor(bias, "bias");
  if (window) options.window = sdpa::Window{window->first, window->second};
  options.key_lengths = span_of(key_lengths);
  options.query_lengths = span_of(query_lengths);
  options.threads = threads;
  options.isa = isa_of(isa);
  return options;
}

sdpa::RunInfo forward(const Input& q, const Input& k, const Input& v, const Output& out,
                      const std::optional<Output>& lse, const std::optional<Output>& weights,
                      const std::optional<Output>& entropy, const std::optional<Input>& mask,
                      const std::optional<Input>& bias, std::optional<float> scale,
                      const std::string& causal,
                      std::optional<std::pair<std::int64_t, std::int64_t>> window,
                      const std::optional<Lengths>& key_lengths,
                      const std::optional<Lengths>& query_lengths, int threads,
                      const std::string& isa, float softcap, const std::optional<Input>& sinks) {
  const sdpa::Options options = options_of(mask, bias, scale, causal, window, key_lengths,
                                           query_lengths, threads, isa, softcap, sinks);
  sdpa::Outputs outputs;
  outputs.out = tensor_of(out, "out");
  if (lse) outputs.lse = tensor_of(*lse, "lse");
  if (weights) outputs.weights = tensor_of(*weights, "weights");
  if (entropy) outputs.entropy = tensor_of(*entropy, "entropy");
  const sdpa::Tensor tq = tensor_of(q, "q"), tk = tensor_of(k, "k"), tv = tensor_of(v, "v");
  nb::gil_scoped_release release;
  return sdpa::forward(tq, tk, tv, options, outputs);
}

// Returns d(scale) when asked for, else None.
std::optional<float> backward(const Input& q, const Input& k, const Input& v, const Input& out,
                              const Input& dout, const Input& lse, const Output& dq,
                              const Output& dk, const Output& dv,
                              const std::optional<Output>& dbias, bool dscale,
                              const std::optional<Output>& dsinks,
                              const std::optional<Input>& mask, const std::optional<Input>& bias,
                              std::optional<float> scale, const std::string& causal,
                              std::optional<std::pair<std::int64_t, std::int64_t>> window,
                              const std::optional<Lengths>& key_lengths,
                              const std::optional<Lengths>& query_lengths, int threads,
                              const std::string& isa, float softcap,
                              const std::optional<Input>& sinks) {
  const sdpa::Options options = options_of(mask, bias, scale, causal, window, key_lengths,
                                           query_lengths, threads, isa, softcap, sinks);
  float dscale_value = 0.0f;
  sdpa::Grads grads;
  grads.dq = tensor_of(dq, "dq");
  grads.dk = tensor_of(dk, "dk");
  grads.dv = tensor_of(dv, "dv");
  if (dbias) grads.dbias = tensor_of(*dbias, "dbias");
  if (dscale) grads.dscale = &dscale_value;
  if (dsinks) grads.dsinks = tensor_of(*dsinks, "dsinks");
  const sdpa::Tensor tq = tensor_of(q, "q"), tk = tensor_of(k, "k"), tv = tensor_of(v, "v");
  const sdpa::Tensor tout = tensor_of(out, "out"), tdout = tensor_of(dout, "dout"),
                     tlse = tensor_of(lse, "lse");
  {
    nb::gil_scoped_release release;
    sdpa::backward(tq, tk, tv, tout, tdout, tlse, options, grads);
  }
  if (!dscale) return std::nullopt;
  return dscale_value;
}

// sdpa::merge_attention on rank-4 outs / rank-3 lses views; writes out and lse.
void merge_attention(const std::vector<Input>& outs, const std::vector<Input>& lses,
                     const Output& out, const std::optional<Output>& lse, int threads) {
  std::vector<sdpa::Tensor> out_views, lse_views;
  for (std::size_t i = 0; i < outs.size(); ++i)
    out_views.push_back(tensor_of(outs[i], "outs[" + std::to_string(i) + "]"));
  for (std::size_t i = 0; i < lses.size(); ++i)
    lse_views.push_back(tensor_of(lses[i], "lses[" + std::to_string(i) + "]"));
  std::optional<sdpa::Tensor> lse_view;
  if (lse) lse_view = tensor_of(*lse, "lse");
  const sdpa::Tensor out_view = tensor_of(out, "out");
  nb::gil_scoped_release release;
  sdpa::merge_attention(out_views, lse_views, out_view, lse_view, threads);
}

// The address the bindings see for an array (tests use it to prove that nothing was copied).
std::uintptr_t data_address(const Input& array) {
  return reinterpret_cast<std::uintptr_t>(array.data());
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "Bindings of the sdpa C++ library; use the functions of the sdpa package instead.";
  m.attr("__version__") = sdpa::version();
  m.attr("best_isa") = sdpa::isa_name(sdpa::best_isa());

  // sdpa::Error derives from std::invalid_argument, which nanobind already maps to ValueError;
  // say so explicitly so that a change of base class cannot silently turn it into RuntimeError.
  nb::register_exception_translator([](const std::exception_ptr& error, void*) {
    try {
      std::rethrow_exception(error);
    } catch (const sdpa::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

  nb::class_<sdpa::RunInfo>(m, "RunInfo", "What a call did: ISA, threads, FLOPs, workspace bytes.")
      .def_prop_ro("isa", [](const sdpa::RunInfo& info) { return sdpa::isa_name(info.isa); })
      .def_ro("threads", &sdpa::RunInfo::threads)
      .def_ro("flops", &sdpa::RunInfo::flops)
      .def_ro("workspace_bytes", &sdpa::RunInfo::workspace_bytes);

  m.def("forward", &forward, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::kw_only(), nb::arg("lse").none() = nb::none(), nb::arg("weights").none() = nb::none(),
        nb::arg("entropy").none() = nb::none(), nb::arg("mask").none() = nb::none(),
        nb::arg("bias").none() = nb::none(), nb::arg("scale").none() = nb::none(),
        nb::arg("causal") = "none", nb::arg("window").none() = nb::none(),
        nb::arg("key_lengths").none() = nb::none(), nb::arg("query_lengths").none() = nb::none(),
        nb::arg("threads") = 0, nb::arg("isa") = "auto", nb::arg("softcap") = 0.0f,
        nb::arg("sinks").none() = nb::none(),
        "sdpa::forward on rank-4 views [B, H, L, D] (float32, float16, or bfloat16 as uint16 "
        "bit patterns); writes out (and lse, weights, entropy when given). Raises ValueError "
        "with the library's message.");

  m.def("backward", &backward, nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"),
        nb::arg("dout"), nb::arg("lse"), nb::arg("dq"), nb::arg("dk"), nb::arg("dv"),
        nb::kw_only(), nb::arg("dbias").none() = nb::none(), nb::arg("dscale") = false,
        nb::arg("dsinks").none() = nb::none(), nb::arg("mask").none() = nb::none(), nb::arg("bias").none() = nb::none(),
        nb::arg("scale").none() = nb::none(), nb::arg("causal") = "none",
        nb::arg("window").none() = nb::none(), nb::arg("key_lengths").none() = nb::none(),
        nb::arg("query_lengths").none() = nb::none(), nb::arg("threads") = 0,
        nb::arg("isa") = "auto", nb::arg("softcap") = 0.0f, nb::arg("sinks").none() = nb::none(),
        "sdpa::backward: writes dq, dk, dv (and dbias, dsinks when given); returns d(scale) "
        "when dscale=True, else None.");

  m.def("merge_attention", &merge_attention, nb::arg("outs"), nb::arg("lses"), nb::arg("out"),
        nb::kw_only(), nb::arg("lse").none() = nb::none(), nb::arg("threads") = 0,
        "sdpa::merge_attention: merges partial results (outs[i] [B, H, L, D], lses[i] [B, H, L]) "
        "over disjoint key sets into out (and lse).");

  m.def("data_address", &data_address, nb::arg("array"),
        "The data pointer the bindings see for an array (no copy is ever made).");
}
