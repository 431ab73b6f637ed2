// The backward benchmark: sdpa::backward against the forward and the FMA peak measured in the same
// run, with the ratios it is judged by.
//
//   sdpa_bench_backward [--threads N] [--repeats N] [--lengths 1024,4096] [--dim 128] [--heads 8]
//                       [--memory-lengths 4096,16384]
//
// GFLOP/s counts 10·B·H·Lq·Lk·D for the backward (4·… for the forward), halved when causal.
// fwd+bwd / fwd = (forward time + backward time) / forward time, medians of interleaved calls.
// Memory: the resident-set high-water mark of one forward+backward in a fresh child process.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench.hpp"

namespace {

using sdpa::bench::AttentionData;
using sdpa::bench::AttentionShape;

struct Args {
  int threads = 2, repeats = 5;
  std::int64_t dim = 128, heads = 8;
  std::vector<std::int64_t> lengths{1024, 4096}, memory_lengths{4096, 16384};
};

std::vector<std::int64_t> parse_list(const char* text) {
  std::vector<std::int64_t> values;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) values.push_back(std::stoll(item));
  return values;
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--threads") a.threads = std::atoi(argv[i + 1]);
    else if (flag == "--repeats") a.repeats = std::max(1, std::atoi(argv[i + 1]));
    else if (flag == "--lengths") a.lengths = parse_list(argv[i + 1]);
    else if (flag == "--memory-lengths") a.memory_lengths = parse_list(argv[i + 1]);
    else if (flag == "--dim") a.dim = std::atoll(argv[i + 1]);
    else if (flag == "--heads") a.heads = std::atoll(argv[i + 1]);
    else {
      std::fprintf(stderr, "sdpa_bench_backward: unknown flag %s\n", argv[i]);
      std::exit(2);
    }
  }
  return a;
}

// Buffers of one forward + backward: [B, H, L, D] contiguous.
struct Problem {
  AttentionData data;
  std::vector<float> lse, dout, dq, dk, dv;
  explicit Problem(const AttentionShape& shape) : data(AttentionData::random(shape, 7)) {
    const std::size_t n = data.q.size();
    lse.resize(static_cast<std::size_t>(shape.batch * shape.heads * shape.length));
    dout.assign(data.out.size(), 0.5f);
    for (std::size_t i = 0; i < dout.size(); ++i) dout[i] = static_cast<float>(i % 17) / 17 - 0.5f;
    dq.resize(n);
    dk.resize(n);
    dv.resize(n);
  }
  sdpa::Tensor t4(std::vector<float>& x) {
    const AttentionShape& s = data.shape;
    return sdpa::Tensor::contiguous(x.data(), sdpa::DType::f32, {s.batch, s.heads, s.length, s.dim});
  }
  sdpa::Options options(int threads) const {
    sdpa::Options o;
    o.threads = threads;
    o.causal = data.shape.causal ? sdpa::Causal::top_left : sdpa::Causal::none;
    return o;
  }
  void forward(int threads) {
    sdpa::Outputs out;
    out.out = t4(data.out);
    const AttentionShape& s = data.shape;
    out.lse = sdpa::Tensor::contiguous(lse.data(), sdpa::DType::f32, {s.batch, s.heads, s.length});
    sdpa::forward(t4(data.q), t4(data.k), t4(data.v), options(threads), out);
  }
  void backward(int threads) {
    const AttentionShape& s = data.shape;
    sdpa::Grads g;
    g.dq = t4(dq);
    g.dk = t4(dk);
    g.dv = t4(dv);
    sdpa::backward(t4(data.q), t4(data.k), t4(data.v), t4(data.out), t4(dout),
                   sdpa::Tensor::contiguous(lse.data(), sdpa::DType::f32, {s.batch, s.heads, s.length}),
                   options(threads), g);
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::size_t status_kib(const char* key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::strtoull(line.c_str() + std::strlen(key), nullptr, 10);
  return 0;
}

// Peak RSS growth (bytes) of one forward + backward at `length`, in a fresh child process.
long long memory_growth(const Args& a, std::int64_t length) {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return -1;
  const pid_t child = fork();
  if (child == 0) {
    close(pipe_fds[0]);
    const std::size_t before = status_kib("VmRSS:");
    Problem p({1, a.heads, length, a.dim, false});
    p.forward(a.threads);
    p.backward(a.threads);
    const long long growth = static_cast<long long>(status_kib("VmHWM:") - before) * 1024;
    if (write(pipe_fds[1], &growth, sizeof growth) != sizeof growth) _exit(1);
    _exit(0);
  }
  close(pipe_fds[1]);
  long long growth = -1;
  if (read(pipe_fds[0], &growth, sizeof growth) != sizeof growth) growth = -1;
  close(pipe_fds[0]);
  int status = 0;
  waitpid(child, &status, 0);
  return growth;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse_args(argc, argv);
  // Memory first: fork before this process starts any OpenMP threads.
  std::vector<long long> growth;
  for (std::int64_t length : a.memory_lengths) growth.push_back(memory_growth(a, length));

  const sdpa::bench::PeakMeasurement peak = sdpa::bench::measure_fma_peak(a.threads);
  std::printf("sdpa_bench_backward: B=1 H=%lld D=%lld, %d threads, median of %d interleaved calls\n",
              static_cast<long long>(a.heads), static_cast<long long>(a.dim), a.threads, a.repeats);
  std::printf("FMA peak at %d threads: %.1f GFLOP/s (fastest repetition)\n\n", a.threads, peak.best());
  std::printf("%7s %7s %10s %10s %10s %9s %13s\n", "L", "causal", "fwd ms", "bwd ms", "bwd GF/s",
              "% peak", "fwd+bwd/fwd");
  for (std::int64_t length : a.lengths)
    for (bool causal : {false, true}) {
      Problem p({1, a.heads, length, a.dim, causal});
      p.forward(a.threads);  // warm-up (and the lse the backward needs)
      p.backward(a.threads);
      std::vector<double> fwd, bwd;
      for (int r = 0; r < a.repeats; ++r) {
        double t0 = sdpa::bench::now_seconds();
        p.forward(a.threads);
        double t1 = sdpa::bench::now_seconds();
        p.backward(a.threads);
        double t2 = sdpa::bench::now_seconds();
        fwd.push_back(t1 - t0);
        bwd.push_back(t2 - t1);
      }
      const double f = median(fwd), b = median(bwd);
      const double flops = 10.0 * a.heads * static_cast<double>(length) * length * a.dim / (causal ? 2 : 1);
      const double gflops = flops / b * 1e-9;
      std::printf("%7lld %7s %10.1f %10.1f %10.1f %8.1f%% %13.2f\n", static_cast<long long>(length),
                  causal ? "on" : "off", f * 1e3, b * 1e3, gflops, 100 * gflops / peak.best(),
                  (f + b) / f);
    }
  std::printf("\npeak RSS growth of one forward+backward (fresh process; inputs, outputs and grads included):\n");
  for (std::size_t i = 0; i < growth.size(); ++i)
    std::printf("  L=%lld: %.1f MiB\n", static_cast<long long>(a.memory_lengths[i]),
                static_cast<double>(growth[i]) / (1 << 20));
  if (growth.size() == 2 && growth[0] > 0)
    std::printf("  growth ratio %.2fx for %.0fx the length (O(L) memory: about the length ratio)\n",
                static_cast<double>(growth[1]) / static_cast<double>(growth[0]),
                static_cast<double>(a.memory_lengths[1]) / static_cast<double>(a.memory_lengths[0]));
  return 0;
}
