// sdpa::visible_keys and sdpa::key_visible against a brute-force predicate written here, from the
// definitions in include/sdpa/sdpa.hpp alone:
//   causal top_left:     query i sees keys j <= i
//   causal bottom_right: query i sees keys j <= i + (Lk - Lq)
//   window (left, right) around p = i (p = i + Lk - Lq when bottom_right): p - left <= j <= p + right,
//                        -1 = unbounded on that side
//   key_lengths[b]:      keys j >= key_lengths[b] are padding; Lk in the rules above is that length
//   query_lengths[b]:    rows i >= query_lengths[b] see nothing; Lq above is that length
//   mask:                true = attend, on top of all of the above
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/mask.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

struct Rules {
  std::int64_t len_q = 0, len_k = 0;  // full sequence lengths
  Causal causal = Causal::none;
  std::int64_t left = -1, right = -1;
  std::vector<std::int32_t> key_lengths, query_lengths;  // empty or one per batch entry
};

// The brute-force predicate, one (b, i, j) at a time.
bool sees(const Rules& r, std::size_t b, std::int64_t i, std::int64_t j) {
  const std::int64_t lq = r.query_lengths.empty() ? r.len_q : r.query_lengths[b];
  const std::int64_t lk = r.key_lengths.empty() ? r.len_k : r.key_lengths[b];
  if (i >= lq || j >= lk) return false;
  const std::int64_t p = r.causal == Causal::bottom_right ? i + (lk - lq) : i;
  if (r.causal != Causal::none && j > p) return false;
  if (r.left != -1 && j < p - r.left) return false;
  if (r.right != -1 && j > p + r.right) return false;
  return true;
}

Problem problem_of(const Rules& r) {
  Problem p;
  p.batch = static_cast<std::int64_t>(std::max(r.key_lengths.size(), r.query_lengths.size()));
  if (p.batch == 0) p.batch = 1;
  p.heads_q = p.heads_kv = 1;
  p.len_q = r.len_q;
  p.len_k = r.len_k;
  p.dim_k = p.dim_v = 1;
  p.causal = r.causal;
  p.window_left = r.left;
  p.window_right = r.right;
  p.key_lengths = r.key_lengths;
  p.query_lengths = r.query_lengths;
  return p;
}

std::string describe(const Rules& r, std::int64_t b) {
  std::ostringstream s;
  s << "Lq " << r.len_q << " Lk " << r.len_k << " causal " << static_cast<int>(r.causal)
    << " window " << r.left << "," << r.right << " b " << b;
  if (!r.key_lengths.empty()) s << " key_len " << r.key_lengths[static_cast<std::size_t>(b)];
  if (!r.query_lengths.empty()) s << " query_len " << r.query_lengths[static_cast<std::size_t>(b)];
  return s.str();
}

// visible_keys gives exactly the brute-force set for every row (which must be one contiguous
// range), empty ranges as begin >= end, and non-empty ranges whose begin and end never decrease.
void expect_matches_brute_force(const Rules& r) {
  const Problem p = problem_of(r);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    std::int64_t last_begin = 0, last_end = 0;
    bool seen_nonempty = false, seen_empty_after = false;
    for (std::int64_t i = 0; i < r.len_q + 2; ++i) {  // two rows past Lq: must be empty
      const KeyRange range = visible_keys(p, b, i);
      std::int64_t first = -1, last = -1, count = 0;
      for (std::int64_t j = 0; j < r.len_k; ++j)
        if (sees(r, static_cast<std::size_t>(b), i, j)) {
          if (first < 0) first = j;
          last = j;
          ++count;
        }
      ASSERT_TRUE(count == 0 || count == last - first + 1) << "brute force not contiguous";
      if (count == 0) {
        ASSERT_TRUE(range.empty()) << describe(r, b) << " row " << i << ": expected no key, got ["
                                   << range.begin << ", " << range.end << ")";
        if (seen_nonempty) seen_empty_after = true;
        continue;
      }
      ASSERT_EQ(range.begin, first) << describe(r, b) << " row " << i;
      ASSERT_EQ(range.end, last + 1) << describe(r, b) << " row " << i;
      ASSERT_FALSE(seen_empty_after) << describe(r, b) << " row " << i
                                     << ": a non-empty row after an empty one";
      if (seen_nonempty) {
        ASSERT_GE(range.begin, last_begin) << describe(r, b) << " row " << i << ": begin decreased";
        ASSERT_GE(range.end, last_end) << describe(r, b) << " row " << i << ": end decreased";
      }
      last_begin = range.begin;
      last_end = range.end;
      seen_nonempty = true;
    }
  }
}

TEST(VisibleKeys, MatchBruteForceForEverySmallCombination) {
  const std::vector<std::int64_t> sides{-1, 0, 1, 2, 5};
  int combinations = 0;
  for (std::int64_t lq = 0; lq <= 7; ++lq)
    for (std::int64_t lk = 0; lk <= 7; ++lk)
      for (Causal causal : {Causal::none, Causal::top_left, Causal::bottom_right})
        for (std::int64_t left : sides)
          for (std::int64_t right : sides) {
            Rules r{lq, lk, causal, left, right, {}, {}};
            expect_matches_brute_force(r);
            ++combinations;
            if (HasFatalFailure()) return;
          }
  EXPECT_EQ(combinations, 8 * 8 * 3 * 5 * 5);
}

TEST(VisibleKeys, MatchBruteForceWithPerBatchLengths) {
  Rng rng(101);
  for (int n = 0; n < 3000; ++n) {
    Rules r;
    r.len_q = rng.integer(0, 40);
    r.len_k = rng.integer(0, 40);
    r.causal = rng.pick({Causal::none, Causal::top_left, Causal::bottom_right});
    r.left = rng.pick<std::int64_t>({-1, 0, rng.integer(0, 45)});
    r.right = rng.pick<std::int64_t>({-1, 0, rng.integer(0, 45)});
    const std::int64_t batch = rng.integer(1, 4);
    for (std::int64_t b = 0; b < batch; ++b) {
      if (n % 3 != 0) r.key_lengths.push_back(static_cast<std::int32_t>(rng.integer(0, r.len_k)));
      if (n % 2 != 0) r.query_lengths.push_back(static_cast<std::int32_t>(rng.integer(0, r.len_q)));
    }
    if (r.key_lengths.empty() && r.query_lengths.empty()) r.key_lengths.push_back(static_cast<std::int32_t>(r.len_k));
    if (!r.key_lengths.empty() && !r.query_lengths.empty()) r.query_lengths.resize(r.key_lengths.size(), 0);
    expect_matches_brute_force(r);
    if (HasFatalFailure()) return;
  }
}

TEST(VisibleKeys, BottomRightUsesEachEntrysOwnLengths) {
  // Entry 0: Lq' = 2, Lk' = 6 -> row 0 sees keys 0..4, row 1 sees 0..5. Entry 1: full 4 x 3 ->
  // rows 0 sees nothing (0 - 1 < 0), row 1 sees key 0.
  Rules r{4, 6, Causal::bottom_right, -1, -1, {6, 3}, {2, 4}};
  const Problem p = problem_of(r);
  EXPECT_EQ(visible_keys(p, 0, 0).begin, 0);
  EXPECT_EQ(visible_keys(p, 0, 0).end, 5);
  EXPECT_EQ(visible_keys(p, 0, 1).end, 6);
  EXPECT_TRUE(visible_keys(p, 0, 2).empty());
  EXPECT_TRUE(visible_keys(p, 1, 0).empty());
  EXPECT_EQ(visible_keys(p, 1, 1).begin, 0);
  EXPECT_EQ(visible_keys(p, 1, 1).end, 1);
  EXPECT_EQ(visible_keys(p, 1, 3).end, 3);
}

TEST(VisibleKeys, WindowCombinedWithCausalHasRightEffectivelyZero) {
  Rules r{6, 6, Causal::top_left, 2, 4, {}, {}};
  const Problem p = problem_of(r);
  for (std::int64_t i = 0; i < 6; ++i) {
    EXPECT_EQ(visible_keys(p, 0, i).begin, std::max<std::int64_t>(0, i - 2));
    EXPECT_EQ(visible_keys(p, 0, i).end, i + 1);
  }
}

TEST(KeyVisible, CombinesStructureWithBroadcastBoolMask) {
  Rng rng(102);
  for (int n = 0; n < 200; ++n) {
    Rules r;
    r.len_q = rng.integer(1, 20);
    r.len_k = rng.integer(1, 20);
    r.causal = rng.pick({Causal::none, Causal::top_left, Causal::bottom_right});
    r.left = rng.pick<std::int64_t>({-1, rng.integer(0, 10)});
    r.right = rng.pick<std::int64_t>({-1, rng.integer(0, 10)});
    r.key_lengths = {static_cast<std::int32_t>(rng.integer(0, r.len_k)),
                     static_cast<std::int32_t>(r.len_k)};
    Problem p = problem_of(r);
    p.heads_q = p.heads_kv = 2;
    // Mask [1, 2, Lq, Lk]: broadcast over batch.
    Strided<std::uint8_t> mask(DType::boolean, {2, r.len_q, r.len_k});
    mask.fill([&](const Index&) { return static_cast<std::uint8_t>(rng.chance(0.6)); });
    View4<const std::uint8_t> view;
    view.data = mask.storage.data();
    view.s1 = mask.tensor.stride[0];
    view.s2 = mask.tensor.stride[1];
    view.s3 = mask.tensor.stride[2];
    p.mask = view;
    for (std::int64_t b = 0; b < 2; ++b)
      for (std::int64_t h = 0; h < 2; ++h)
        for (std::int64_t i = 0; i < r.len_q; ++i)
          for (std::int64_t j = 0; j < r.len_k; ++j) {
            const bool expected = sees(r, static_cast<std::size_t>(b), i, j) && mask.at({h, i, j}) != 0;
            ASSERT_EQ(key_visible(p, b, h, i, j), expected)
                << describe(r, b) << " h " << h << " i " << i << " j " << j;
          }
  }
}

TEST(VisibleKeys, ValidatedProblemCarriesCausalWindowAndLengths) {
  std::vector<float> q(2 * 1 * 5 * 4), k(2 * 1 * 7 * 4), v(2 * 1 * 7 * 4);
  Options options;
  options.causal = Causal::bottom_right;
  options.window = Window{1, 3};
  const std::vector<std::int32_t> key_lengths{7, 4}, query_lengths{5, 2};
  options.key_lengths = key_lengths;
  options.query_lengths = query_lengths;
  const Problem p = validate_inputs(Tensor::contiguous(q.data(), DType::f32, {2, 1, 5, 4}),
                                    Tensor::contiguous(k.data(), DType::f32, {2, 1, 7, 4}),
                                    Tensor::contiguous(v.data(), DType::f32, {2, 1, 7, 4}), options);
  Rules r{5, 7, Causal::bottom_right, 1, 3, key_lengths, query_lengths};
  for (std::int64_t b = 0; b < 2; ++b)
    for (std::int64_t i = 0; i < 5; ++i)
      for (std::int64_t j = 0; j < 7; ++j)
        EXPECT_EQ(key_visible(p, b, 0, i, j), sees(r, static_cast<std::size_t>(b), i, j))
            << describe(r, b) << " i " << i << " j " << j;
}

}  // namespace
}  // namespace sdpa::test
