// libFuzzer target: sdpa::forward then sdpa::backward (as a training step calls them) on calls
// decoded from the input (fuzz_case.hpp; finite values only), every gradient checked against
// reference::backward<double> with the tests' rule (backward_support.hpp's check_grads: DESIGN.md's
// accuracy rule plus the fp32 rounding bound of the prescribed algorithm, rows that see no key
// exactly zero, nothing outside the gradient views written). Softcap, sinks (and dsinks) as the
// decoder draws them. bf16 / f16 inputs: q, k, v and dout in the dtype, gradients in f32 (on
// request), which the backward computes exactly as the fp32 backward on the same values, so the
// same rule applies; the forward that produces out and lse runs on the f32 copies of those values
// (a bf16 forward's out carries P rounded to bf16, an error the fp32 rule does not allow for).
#include <cstdio>
#include <cstdlib>

#include "backward_support.hpp"
#include "fuzz_case.hpp"

namespace sdpa::fuzz {
namespace {

struct FuzzBackwardCase {
  test::BackwardCase c;
  std::optional<Strided<std::uint16_t>> dout16;  // dout in the inputs' 16-bit dtype
};

FuzzBackwardCase backward_case(FuzzedDataProvider& d) {
  Case c = decode_case(d, /*allow_specials=*/false, /*allow_huge_bias=*/false,
                       /*allow_16bit_out=*/false);
  const std::vector<std::int64_t> out_shape{c.inputs.batch(), c.inputs.heads_q(), c.inputs.len_q(),
                                            c.inputs.dim_v()};
  Layout dout_layout;
  Strided<float> dout =
      decode_floats(d, out_shape, fuzz::kMaxValueExponent, false, false, &dout_layout);
  std::optional<Strided<std::uint16_t>> dout16;
  if (test::is_16bit(c.inputs.dtype)) dout16 = test::to_16bit(dout, c.inputs.dtype, dout_layout);
  FuzzBackwardCase fc{
      test::BackwardCase{std::move(c.inputs), std::move(dout), {}, {}, c.threads, c.what},
      std::move(dout16)};
  test::BackwardCase& bc = fc.c;
  bc.forward_layouts.out = c.outputs.out;
  bc.forward_layouts.lse = c.outputs.lse;
  test::GradLayouts& g = bc.grad_layouts;
  g.dq = decode_layout(d, 4, false);
  g.dk = decode_layout(d, 4, false);
  g.dv = decode_layout(d, 4, false);
  g.want_dbias = bc.inputs.bias.has_value() && d.ConsumeBool();
  if (g.want_dbias) g.dbias = decode_layout(d, bc.inputs.bias->rank(), false);
  g.want_dscale = d.ConsumeBool();
  g.want_dsinks = bc.inputs.sinks.has_value() && d.ConsumeBool();
  if (g.want_dsinks) g.dsinks = decode_layout(d, 1, false);
  bc.what += std::string(g.want_dbias ? " dbias" : "") + (g.want_dscale ? " dscale" : "") +
             (g.want_dsinks ? " dsinks" : "");
  return fc;
}

// The forward on the f32 copies (see the top), then the backward on the inputs as drawn.
void run(const FuzzBackwardCase& fc, test::OutputBuffers& forward_outputs, test::GradBuffers& grads,
         Isa isa) {
  const test::BackwardCase& c = fc.c;
  if (!fc.dout16) {
    c.run(forward_outputs, grads, isa, c.threads);
    return;
  }
  forward_outputs.reset();
  Options o = c.inputs.options();
  o.isa = isa;
  o.threads = c.threads;
  forward(c.inputs.q.tensor, c.inputs.k.tensor, c.inputs.v.tensor, o, forward_outputs.outputs());
  grads.reset();
  backward(c.inputs.q_tensor(), c.inputs.k_tensor(), c.inputs.v_tensor(),
           forward_outputs.out.tensor, fc.dout16->tensor, forward_outputs.lse->tensor, o,
           grads.grads());
}

}  // namespace
}  // namespace sdpa::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace sdpa;
  FuzzedDataProvider d(data, size);
  const std::vector<Isa> isas = test::supported_isas();
  const Isa isa = isas[d.ConsumeIntegralInRange<std::size_t>(0, isas.size() - 1)];
  const fuzz::FuzzBackwardCase fc = fuzz::backward_case(d);
  const test::BackwardCase& c = fc.c;
  if (std::getenv("SDPA_FUZZ_PRINT") != nullptr)  // what each input decodes to (picking seeds)
    std::fprintf(stderr, "fuzz case: %s isa=%s\n", c.what.c_str(), isa_name(isa));
  test::OutputBuffers forward_outputs = c.make_forward_outputs();
  test::GradBuffers grads = c.make_grads();
  try {
    const test::BackwardReferences refs = c.references(forward_outputs, grads);
    fuzz::run(fc, forward_outputs, grads, isa);
    if (auto r = test::check_grads(refs, grads); !r) {
      std::fprintf(stderr, "fuzz: %s\n  call: %s isa=%s\n", r.message(), c.what.c_str(),
                   isa_name(isa));
      std::abort();
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "fuzz: valid call threw: %s\n  call: %s\n", e.what(), c.what.c_str());
    std::abort();
  }
  return 0;
}
