// `lotgrad info` and `lotgrad probe`.
#include <cblas.h>

#include <cmath>

#include <cstdio>
#include <lotgrad/lotgrad.h>

#include "cli.h"
#include "commands.h"

namespace lotgrad::cli {

int cmd_info(int argc, char** argv) {
  Args a(argc, argv);
  std::printf("lotgrad 0.1.0\n");
  std::printf("threads: %d (OpenMP max %d, OpenBLAS %d)\n", get_num_threads(), omp_get_max_threads(),
              openblas_get_num_threads());
  std::printf("OpenBLAS: %s\n", openblas_get_config());
  std::printf("attention mechanisms:");
  for (auto& n : nn::attention_names()) std::printf(" %s", n.c_str());
  std::printf("\n");
  return 0;
}

int cmd_probe(int argc, char** argv) {
  Args a(argc, argv, {"help"});
  if (a.flag("help")) {
    std::puts(
        "lotgrad probe --attention NAME [--n 64] [--d-model 64] [--heads 2] [--pad 0] [--seed 0] [--out attn.npy]\n"
        "  Builds one multi-head attention layer with the named mechanism, feeds it a random (1, n, d_model)\n"
        "  input (the last --pad positions padded), writes its (1, H, n, n) attention matrix to --out as .npy\n"
        "  and prints per-head statistics: max weight, row/column sum ranges, mean row entropy, numerical rank.");
    return 0;
  }
  a.check_known({"attention", "n", "d-model", "heads", "pad", "seed", "out", "help", "threads"});
  if (a.has("threads")) set_num_threads((int)a.get_int("threads", 1));
  const int64_t n = a.get_int("n", 64), D = a.get_int("d-model", 64), H = a.get_int("heads", 2), pad = a.get_int("pad", 0);
  if (pad < 0 || pad >= n) throw std::invalid_argument("--pad must be in [0, n)");
  Generator g((uint64_t)a.get_int("seed", 0));
  nn::AttentionOptions opt;
  opt.name = a.get("attention", "softmax");
  opt.n_heads = H;
  nn::MultiHeadAttention mha(D, opt, g);
  Tensor x = randn({1, n, D}, g);
  std::vector<bool> m(n, false);
  for (int64_t j = n - pad; j < n; ++j) m[j] = true;
  Tensor mask = pad ? Tensor::from_vector(m, {1, n}) : Tensor();
  Tensor A = nn::probe_attention(mha, x, mask);
  const std::string out = a.get("out", "attn_" + opt.name + ".npy");
  save_npy(out, A);
  nn::AttentionStats st = nn::attention_stats(A, mask);
  std::printf("%s: attention (1, %lld, %lld, %lld) written to %s\n", opt.name.c_str(), (long long)H, (long long)n,
              (long long)n, out.c_str());
  for (int64_t h = 0; h < H; ++h) {
    double rs_lo = 1e9, rs_hi = -1e9, cs_lo = 1e9, cs_hi = -1e9, ent = 0, mx = 0;
    for (int64_t i = 0; i < n - pad; ++i) {
      rs_lo = std::min(rs_lo, st.row_sum.at({0, h, i}));
      rs_hi = std::max(rs_hi, st.row_sum.at({0, h, i}));
      cs_lo = std::min(cs_lo, st.col_sum.at({0, h, i}));
      cs_hi = std::max(cs_hi, st.col_sum.at({0, h, i}));
      ent += st.row_entropy.at({0, h, i}) / (double)(n - pad);
      mx = std::max(mx, st.row_max.at({0, h, i}));
    }
    std::printf("head %lld: max weight %.4f (uniform 1/n = %.4f), row sums [%.4f, %.4f], column sums [%.4f, %.4f], "
                "mean row entropy %.3f (uniform %.3f), rank %lld\n",
                (long long)h, mx, 1.0 / (double)(n - pad), rs_lo, rs_hi, cs_lo, cs_hi, ent, std::log((double)(n - pad)),
                (long long)st.rank.at({0, h}));
  }
  return 0;
}

}  // namespace lotgrad::cli
