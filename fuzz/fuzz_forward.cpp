// libFuzzer target: sdpa::forward on calls decoded from the input (fuzz_case.hpp).
//   * A valid call must not throw and must satisfy DESIGN.md's accuracy rule against the fp64
//     reference on every output (test_support.hpp's check_outputs: out, lse, weights, entropy;
//     fully masked rows exactly 0 / −inf; nothing outside the output views written).
//   * With NaN / ±inf in q, k or v ("specials"): a row the reference finds NaN must be NaN; a
//     non-finite value in v may also reach other rows of its (batch, kv-head) group as 0·NaN
//     (docs/RELIABILITY.md), so those rows must only be non-finite where the reference is; every
//     other row must still pass the accuracy rule.
//   * With one argument broken on purpose (a mismatched extent, a bad stride, length, window,
//     scale, softcap, sinks, dtype, null pointer, ...), the call must throw sdpa::Error and write
//     nothing.
//   * bf16 / f16 inputs (and out) are checked like the property tests check them: against the
//     fp64 reference on the same 16-bit values with the 16-bit naive baseline
//     (test_support.hpp's apply_16bit_baseline).
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/mask.hpp"
#include "fuzz_case.hpp"

namespace sdpa::fuzz {
namespace {

using test::OutputBuffers;

struct Call {
  Tensor q, k, v;
  Options options;
  Outputs outputs;
};

constexpr int kMutations = 17;

// Breaks one argument of an otherwise valid call (`kind` in [0, kMutations)).
void mutate(Call& call, int kind, std::vector<std::int32_t>& lengths_storage,
            std::vector<float>& sinks_storage) {
  const std::int64_t batch = call.q.shape[0];
  switch (kind) {
    case 0:
      call.k.shape[3] += 1;
      break;  // Dk mismatch
    case 1:
      call.v.shape[2] += 1;
      break;  // Lk mismatch
    case 2:
      call.outputs.out.shape[3] += 1;
      break;  // out shape
    case 3:
      call.q.shape[1] = call.k.shape[1] * 2 + 1;
      call.k.shape[1] *= 2;
      call.v.shape[1] *= 2;
      break;
    case 4:
      call.q.shape[2] = -1;
      break;  // negative extent
    case 5:
      call.q.dtype = DType::f64;
      break;
    case 6:
      call.v.rank = 3;
      break;
    case 7:
      lengths_storage.assign(static_cast<std::size_t>(batch + 1), 0);
      call.options.key_lengths = lengths_storage;  // wrong size
      break;
    case 8:
      lengths_storage.assign(static_cast<std::size_t>(batch), 0);
      if (batch > 0)
        lengths_storage[0] = static_cast<std::int32_t>(call.q.shape[2] + 1);
      else
        lengths_storage.push_back(0);
      call.options.query_lengths = lengths_storage;  // beyond Lq (or size)
      break;
    case 9:
      call.options.window = Window{-2, 0};
      break;
    case 10:
      call.options.scale = std::nanf("");
      break;
    case 11:
      call.options.threads = -1;
      break;
    case 12: {
      Tensor lse = call.outputs.out;  // lse of rank 4
      call.outputs.lse = lse;
      break;
    }
    case 13:
      call.options.softcap = -1.0f;
      break;
    case 14:  // sinks of extent Hq + 1
      sinks_storage.assign(static_cast<std::size_t>(call.q.shape[1] + 1), 0.0f);
      call.options.sinks =
          Tensor::contiguous(sinks_storage.data(), DType::f32, {call.q.shape[1] + 1});
      break;
    case 15:  // a NaN sink
      sinks_storage.assign(static_cast<std::size_t>(call.q.shape[1]), 0.0f);
      if (!sinks_storage.empty())
        sinks_storage.back() = std::nanf("");
      else
        call.options.softcap = std::nanf("");  // Hq = 0: nothing to hold a NaN sink
      call.options.sinks = Tensor::contiguous(sinks_storage.data(), DType::f32, {call.q.shape[1]});
      break;
    default: {
      Tensor mask;  // mask of dtype f32
      mask.data = call.q.data;
      mask.dtype = DType::f32;
      mask.rank = 1;
      mask.shape[0] = 1;
      mask.stride[0] = 1;
      call.options.mask = mask;
    }
  }
}

void check_rejected(const Case& c, OutputBuffers& buffers, int kind) {
  Call call{c.inputs.q_tensor(), c.inputs.k_tensor(), c.inputs.v_tensor(), c.inputs.options(),
            buffers.outputs()};
  call.options.isa = c.isa;
  call.options.threads = c.threads;
  std::vector<std::int32_t> lengths;
  std::vector<float> sinks;
  mutate(call, kind, lengths, sinks);
  buffers.reset();
  try {
    forward(call.q, call.k, call.v, call.options, call.outputs);
  } catch (const Error&) {
    for (float x : buffers.out.storage)
      if (!test::is_sentinel(x))
        report(::testing::AssertionFailure() << "out written before an error", c);
    if (buffers.out16)
      for (std::uint16_t x : buffers.out16->storage)
        if (!test::is_sentinel(x))
          report(::testing::AssertionFailure() << "out written before an error", c);
    if (buffers.lse)
      for (float x : buffers.lse->storage)
        if (!test::is_sentinel(x))
          report(::testing::AssertionFailure() << "lse written before an error", c);
    return;
  }
  report(::testing::AssertionFailure() << "mutation " << kind << " was not rejected", c);
}

bool row_has_special(const std::vector<double>& values, std::size_t row, std::size_t length) {
  for (std::size_t n = row * length; n < (row + 1) * length; ++n)
    if (!std::isfinite(values[n])) return true;
  return false;
}

// Whether v holds NaN or ±inf in a key of batch entry b, kv-head hk that is not padding.
bool values_not_finite(const test::Inputs& in, std::int64_t b, std::int64_t hk) {
  const std::int64_t len =
      in.key_lengths.empty() ? in.len_k() : in.key_lengths[static_cast<std::size_t>(b)];
  for (std::int64_t j = 0; j < len; ++j)
    for (std::int64_t d = 0; d < in.dim_v(); ++d)
      if (!std::isfinite(in.v.at({b, hk, j, d}))) return true;
  return false;
}

// Rewrites row (b, h, i) as a fully masked row in the references and the outputs, so check_outputs
// skips it once its special-value promise has been checked.
void neutralize_row(test::References& refs, OutputBuffers& o, std::int64_t b, std::int64_t h,
                    std::int64_t i, std::size_t row) {
  const Index shape = o.out.shape();
  const auto Dv = static_cast<std::size_t>(shape[3]);
  const auto Lk = refs.ref64.weights.size() / std::max<std::size_t>(refs.ref64.lse.size(), 1);
  for (std::size_t d = 0; d < Dv; ++d)
    refs.ref64.out[row * Dv + d] = refs.naive32.out[row * Dv + d] = 0;
  for (std::size_t j = 0; j < Lk; ++j)
    refs.ref64.weights[row * Lk + j] = refs.naive32.weights[row * Lk + j] = 0;
  refs.ref64.lse[row] = refs.naive32.lse[row] = -std::numeric_limits<float>::infinity();
  refs.ref64.entropy[row] = refs.naive32.entropy[row] = 0;
  for (std::int64_t d = 0; d < shape[3]; ++d) o.out.at({b, h, i, d}) = 0.0f;
  if (o.lse) o.lse->at({b, h, i, 0}) = -test::kInf;
  if (o.entropy) o.entropy->at({b, h, i, 0}) = 0.0f;
  if (o.weights)
    for (std::int64_t j = 0; j < static_cast<std::int64_t>(Lk); ++j)
      o.weights->at({b, h, i, j}) = 0.0f;
}

bool fast_row_has_special(const OutputBuffers& o, std::int64_t b, std::int64_t h, std::int64_t i) {
  for (std::int64_t d = 0; d < o.out.shape()[3]; ++d)
    if (!std::isfinite(o.out.at({b, h, i, d}))) return true;
  return false;
}

// The special-value promises (see the top of this file); the rows they cover are neutralized.
void check_special_rows(const Case& c, test::References& refs, OutputBuffers& o) {
  const test::Inputs& in = c.inputs;
  const std::int64_t group = in.heads_q() / in.k.tensor.shape[1];
  const auto Dv = static_cast<std::size_t>(in.dim_v());
  for (std::int64_t b = 0; b < in.batch(); ++b)
    for (std::int64_t h = 0; h < in.heads_q(); ++h) {
      const bool dirty_values = values_not_finite(in, b, h / group);
      for (std::int64_t i = 0; i < in.len_q(); ++i) {
        const auto row = static_cast<std::size_t>((b * in.heads_q() + h) * in.len_q() + i);
        const bool ref_nan_row = std::isnan(refs.ref64.lse[row]);
        const bool ref_special = ref_nan_row || row_has_special(refs.ref64.out, row, Dv);
        if (!ref_special && !dirty_values) continue;
        if (ref_special && Dv > 0 && !fast_row_has_special(o, b, h, i))
          report(::testing::AssertionFailure()
                     << "row " << row << " is finite, the reference's is not",
                 c);
        if (ref_nan_row && o.lse && !std::isnan(o.lse->at({b, h, i, 0})))
          report(::testing::AssertionFailure() << "lse row " << row << " is not NaN", c);
        neutralize_row(refs, o, b, h, i, row);
      }
    }
}

void check_valid(Case& c, OutputBuffers& buffers) {
  test::References refs = c.inputs.references(buffers);  // 16-bit: the 16-bit baseline
  const RunInfo info = c.inputs.run(buffers, c.isa, c.threads);
  if (info.isa != c.isa)
    report(::testing::AssertionFailure() << "ran on " << isa_name(info.isa), c);
  if (c.specials) check_special_rows(c, refs, buffers);
  if (auto r = test::check_outputs(refs, buffers, c.inputs.len_k(), c.inputs.dim_v()); !r)
    report(r, c);
}

}  // namespace
}  // namespace sdpa::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace sdpa::fuzz;
  FuzzedDataProvider d(data, size);
  const auto mutation = d.ConsumeIntegral<std::uint8_t>();
  Case c = decode_case(d, /*allow_specials=*/true, /*allow_huge_bias=*/true);
  if (std::getenv("SDPA_FUZZ_PRINT") != nullptr)  // what each input decodes to (picking seeds)
    std::fprintf(stderr, "fuzz case: %s%s\n", c.what.c_str(),
                 mutation >= 256 - kMutations ? " (rejection check)" : "");
  sdpa::test::OutputBuffers buffers = c.inputs.make_outputs(c.outputs);
  try {
    if (mutation >= 256 - kMutations) {
      check_rejected(c, buffers, 255 - mutation);
    } else {
      check_valid(c, buffers);
    }
  } catch (const sdpa::Error& e) {
    report(::testing::AssertionFailure() << "valid call threw: " << e.what(), c);
  }
  return 0;
}
