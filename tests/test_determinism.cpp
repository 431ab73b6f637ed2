// Determinism beyond out and lse (those are covered in test_forward_edges.cpp and dq..dscale in
// test_backward.cpp): the attention weights and the entropy, and the gradients of a call with every
// kind of mask and a bias reduced over broadcast dimensions, must be bitwise identical for thread
// counts 1, 2, 3, 4, 7 and for repeated runs, on every instruction set.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "backward_support.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

const int kThreadCounts[] = {1, 2, 3, 4, 7, 2, 7};  // the repeats catch run-to-run differences

// q/k/v with GQA, a bool mask, a bias broadcast over batch and rows, a window and per-batch
// lengths.
Inputs masked_inputs(std::uint64_t seed, std::int64_t len_q, std::int64_t len_k) {
  Rng rng(seed);
  Inputs in = random_inputs(rng, 3, 4, 2, len_q, len_k, 40, 24);
  in.mask.emplace(DType::boolean, std::vector<std::int64_t>{3, 1, len_q, len_k});
  in.mask->fill([&](const Index&) { return static_cast<std::uint8_t>(rng.chance(0.85)); });
  in.bias = random_floats(rng, {1, 4, 1, len_k}, {});
  in.base.causal = Causal::bottom_right;
  in.base.window = Window{150, 0};
  in.key_lengths = {static_cast<std::int32_t>(len_k), static_cast<std::int32_t>(len_k / 2), 0};
  in.query_lengths = {static_cast<std::int32_t>(len_q), static_cast<std::int32_t>(len_q - 3), 5};
  return in;
}

TEST(Determinism, ForwardWeightsAndEntropyAreBitwiseIdenticalForAnyThreadCountAndRun) {
  const Inputs in = masked_inputs(401, 130, 420);
  OutputBuffers first = in.make_outputs(), again = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(first, isa, 1);
    for (int threads : kThreadCounts) {
      in.run(again, isa, threads);
      const std::string where = std::string(isa_name(isa)) + ", threads " + std::to_string(threads);
      EXPECT_TRUE(same_output_bits(first, again)) << where;
    }
  }
}

TEST(Determinism, MaskedGradientsWithBroadcastDbiasAreBitwiseIdenticalForAnyThreadCountAndRun) {
  Rng rng(402);
  BackwardCase c{
      masked_inputs(403, 100, 400), random_floats(rng, {3, 4, 100, 24}, {}), {}, {}, 1, ""};
  c.grad_layouts.want_dbias = c.grad_layouts.want_dscale = true;  // dbias [1, 4, 1, Lk]: sums rows
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 1);
    const std::vector<std::vector<float>> first = all_grads(grads);
    for (int threads : kThreadCounts) {
      c.run(forward_outputs, grads, isa, threads);
      const std::vector<std::vector<float>> again = all_grads(grads);
      for (std::size_t g = 0; g < first.size(); ++g)
        EXPECT_TRUE(bitwise_equal(first[g], again[g]))
            << "gradient " << g << " (dq, dk, dv, dbias, dscale), " << isa_name(isa) << ", threads "
            << threads;
    }
  }
}

}  // namespace
}  // namespace sdpa::test
