// libFuzzer target: sdpa::forward then sdpa::backward (as a training step calls them) on calls
// decoded from the input (fuzz_case.hpp; finite values only), every gradient checked against
// reference::backward<double> with the tests' rule (backward_support.hpp's check_grads: DESIGN.md's
// accuracy rule plus the fp32 rounding bound of the prescribed algorithm, rows that see no key
// exactly zero, nothing outside the gradient views written).
#include "backward_support.hpp"
#include "fuzz_case.hpp"

namespace sdpa::fuzz {
namespace {

test::BackwardCase backward_case(FuzzedDataProvider& d) {
  Case c = decode_case(d, /*allow_specials=*/false, /*allow_huge_bias=*/false);
  const std::vector<std::int64_t> out_shape{c.inputs.batch(), c.inputs.heads_q(), c.inputs.len_q(),
                                            c.inputs.dim_v()};
  test::BackwardCase bc{std::move(c.inputs),
                        decode_floats(d, out_shape, fuzz::kMaxValueExponent, false, false),
                        {},
                        {},
                        c.threads,
                        c.what};
  bc.forward_layouts.out = c.outputs.out;
  bc.forward_layouts.lse = c.outputs.lse;
  test::GradLayouts& g = bc.grad_layouts;
  g.dq = decode_layout(d, 4, false);
  g.dk = decode_layout(d, 4, false);
  g.dv = decode_layout(d, 4, false);
  g.want_dbias = bc.inputs.bias.has_value() && d.ConsumeBool();
  if (g.want_dbias) g.dbias = decode_layout(d, bc.inputs.bias->rank(), false);
  g.want_dscale = d.ConsumeBool();
  bc.what += std::string(g.want_dbias ? " dbias" : "") + (g.want_dscale ? " dscale" : "");
  return bc;
}

}  // namespace
}  // namespace sdpa::fuzz

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace sdpa;
  FuzzedDataProvider d(data, size);
  const std::vector<Isa> isas = test::supported_isas();
  const Isa isa = isas[d.ConsumeIntegralInRange<std::size_t>(0, isas.size() - 1)];
  const test::BackwardCase c = fuzz::backward_case(d);
  test::OutputBuffers forward_outputs = c.make_forward_outputs();
  test::GradBuffers grads = c.make_grads();
  try {
    const test::BackwardReferences refs = c.references(forward_outputs, grads);
    c.run(forward_outputs, grads, isa, c.threads);
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
