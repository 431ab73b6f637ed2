// sdpa decode: token generation with the multi-head attention layer (random weights, a random
// embedding table as the vocabulary) over a paged sdpa::KvCache — f32, bf16 or int8 storage —
// printing tokens per second and the cache's bytes. A progress bar is drawn on stderr when it is a
// terminal (not with --no-progress or --json).
//
// Each step embeds the last token of every sequence, runs MultiHeadAttention::decode_step (project,
// append to the cache, attend over the whole context, output projection) and picks the next token
// greedily: argmax over the vocabulary of y · embeddingᵀ. The prompt is appended in one step.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/errors.hpp"
#include "sdpa/kv_cache.hpp"
#include "sdpa/mha.hpp"

namespace sdpa::cli {
namespace {

struct DecodeArgs {
  std::int64_t d_model = 512, heads = 8, kv_heads = 2, head_dim = 64;
  std::int64_t sequences = 2, prompt = 64, tokens = 128, vocab = 256, block_tokens = 256;
  std::string storage = "bf16";
  int threads = 0;
  std::uint64_t seed = 1;
  bool json = false, no_progress = false;
};

KvStorage storage_of(const std::string& name) {
  if (name == "f32") return KvStorage::f32;
  if (name == "bf16") return KvStorage::bf16;
  if (name == "i8") return KvStorage::i8;
  fail("--storage = '", name, "': expected f32, bf16 or i8");
}

void run_decode(const DecodeArgs& a) {
  if (a.heads % a.kv_heads != 0)
    fail("--heads = ", a.heads, ": expected a multiple of --kv-heads = ", a.kv_heads);
  MultiHeadAttention layer(
      {.d_model = a.d_model, .heads = a.heads, .kv_heads = a.kv_heads, .d_k = a.head_dim});
  layer.init_parameters(a.seed);
  const std::int64_t context = a.prompt + a.tokens;
  const std::int64_t pages_per_sequence = (context + a.block_tokens - 1) / a.block_tokens;
  KvCache cache({a.kv_heads, a.head_dim, a.head_dim, a.block_tokens,
                 a.sequences * pages_per_sequence, storage_of(a.storage)});

  // Token embeddings: unit-variance rows, so the layer sees inputs of the scale it was built for.
  std::mt19937_64 rng(a.seed + 1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> embedding(static_cast<std::size_t>(a.vocab * a.d_model));
  for (float& x : embedding) x = normal(rng);
  const auto embed = [&](const std::vector<std::int64_t>& tokens, std::vector<float>& x) {
    x.resize(tokens.size() * static_cast<std::size_t>(a.d_model));
    for (std::size_t n = 0; n < tokens.size(); ++n)
      std::copy_n(embedding.begin() + tokens[n] * a.d_model, a.d_model,
                  x.begin() + static_cast<std::ptrdiff_t>(n) * a.d_model);
  };
  const auto next_token = [&](const float* y) {  // greedy: argmax_t y · embedding[t]
    std::int64_t best = 0;
    float best_score = -1e30f;
    for (std::int64_t t = 0; t < a.vocab; ++t) {
      float score = 0;
      for (std::int64_t d = 0; d < a.d_model; ++d)
        score += y[d] * embedding[static_cast<std::size_t>(t * a.d_model + d)];
      if (score > best_score) best_score = score, best = t;
    }
    return best;
  };

  std::vector<int> ids;
  for (std::int64_t s = 0; s < a.sequences; ++s) ids.push_back(cache.add_sequence());
  AttendOptions options;
  options.threads = a.threads;
  std::vector<std::int64_t> prompt_tokens;
  std::uniform_int_distribution<std::int64_t> uniform(0, a.vocab - 1);
  for (std::int64_t n = 0; n < a.sequences * a.prompt; ++n) prompt_tokens.push_back(uniform(rng));
  std::vector<float> x, y(static_cast<std::size_t>(a.sequences * a.prompt * a.d_model));
  embed(prompt_tokens, x);
  using Clock = std::chrono::steady_clock;
  const auto prompt_start = Clock::now();
  layer.decode_step(x, a.prompt, cache, ids, y, options);
  const double prompt_s = std::chrono::duration<double>(Clock::now() - prompt_start).count();

  std::vector<std::int64_t> last(static_cast<std::size_t>(a.sequences));
  for (std::int64_t s = 0; s < a.sequences; ++s)
    last[static_cast<std::size_t>(s)] =
        next_token(&y[static_cast<std::size_t>(((s + 1) * a.prompt - 1) * a.d_model)]);
  std::vector<std::vector<std::int64_t>> generated(static_cast<std::size_t>(a.sequences));
  ProgressBar bar(!a.no_progress && !a.json);
  const ProgressBar::Callback progress = bar.callback();
  y.resize(static_cast<std::size_t>(a.sequences * a.d_model));
  const auto start = Clock::now();
  for (std::int64_t step = 0; step < a.tokens; ++step) {
    for (std::int64_t s = 0; s < a.sequences; ++s)
      generated[static_cast<std::size_t>(s)].push_back(last[static_cast<std::size_t>(s)]);
    embed(last, x);
    layer.decode_step(x, 1, cache, ids, y, options);
    for (std::int64_t s = 0; s < a.sequences; ++s)
      last[static_cast<std::size_t>(s)] = next_token(&y[static_cast<std::size_t>(s * a.d_model)]);
    if (progress) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      progress(static_cast<double>(step + 1) / static_cast<double>(a.tokens),
               std::to_string(step + 1) + "/" + std::to_string(a.tokens) + " steps, " +
                   std::to_string(
                       static_cast<int>(static_cast<double>((step + 1) * a.sequences) / elapsed)) +
                   " tokens/s");
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  bar.finish();
  const double tokens_per_s = static_cast<double>(a.tokens * a.sequences) / seconds;
  const std::size_t used =
      cache.bytes_per_token() * static_cast<std::size_t>(context * a.sequences);
  if (a.json) {
    std::cout << nlohmann::json{{"command", "decode"},
                                {"storage", a.storage},
                                {"sequences", a.sequences},
                                {"prompt", a.prompt},
                                {"tokens", a.tokens},
                                {"prompt_seconds", prompt_s},
                                {"seconds", seconds},
                                {"tokens_per_second", tokens_per_s},
                                {"cache_bytes_per_token", cache.bytes_per_token()},
                                {"cache_bytes_used", used},
                                {"cache_pool_bytes", cache.bytes()},
                                {"context", cache.length(ids.front())},
                                {"generated", generated}}
                     .dump(2)
              << std::endl;
    return;
  }
  std::cout << "sdpa decode: d_model " << a.d_model << ", " << a.heads << " heads (" << a.kv_heads
            << " kv), head dim " << a.head_dim << ", " << a.sequences << " sequences, " << a.storage
            << " cache in pages of " << a.block_tokens << " tokens\n";
  std::cout << "prompt: " << a.prompt << " tokens per sequence in " << prompt_s * 1e3 << " ms\n";
  std::cout << "generated " << a.tokens << " tokens per sequence in " << seconds
            << " s: " << tokens_per_s << " tokens/s\n";
  std::cout << "cache: " << cache.bytes_per_token() << " bytes per token, "
            << static_cast<double>(used) / (1024.0 * 1024.0) << " MiB used by "
            << context * a.sequences << " tokens, pool "
            << static_cast<double>(cache.bytes()) / (1024.0 * 1024.0) << " MiB\n";
  std::cout << "sequence 0 starts:";
  for (std::size_t n = 0; n < std::min<std::size_t>(16, generated[0].size()); ++n)
    std::cout << ' ' << generated[0][n];
  std::cout << "\n";
}

}  // namespace

void add_decode_command(CLI::App& app) {
  auto args = std::make_shared<DecodeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "decode", "Generate tokens with the attention layer over a paged KV cache (random weights)");
  cmd->add_option("--d-model", args->d_model, "model width")
      ->check(CLI::Range(1, 1 << 16))
      ->capture_default_str();
  cmd->add_option("--heads", args->heads, "query heads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--kv-heads", args->kv_heads, "key/value heads")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--head-dim", args->head_dim, "head dimension")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  cmd->add_option("--sequences", args->sequences, "sequences decoded together")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--prompt", args->prompt, "prompt tokens per sequence")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--tokens", args->tokens, "tokens to generate per sequence")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--vocab", args->vocab, "vocabulary size")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--block-tokens", args->block_tokens, "tokens per cache page")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--storage", args->storage, "cache storage: f32, bf16 or i8")
      ->capture_default_str();
  cmd->add_option("--threads", args->threads, "threads (default: all cores)")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--seed", args->seed, "seed of the weights, embeddings and prompt")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "print one JSON object instead of text");
  cmd->add_flag("--no-progress", args->no_progress, "no progress bar on stderr");
  cmd->callback([args] { run_decode(*args); });
}

}  // namespace sdpa::cli
