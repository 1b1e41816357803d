// `lotgrad`: the command-line program. Subcommands grow with the project.
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#include <lotgrad/core/parallel.h>
#include <lotgrad/dist/comm.h>
#include <lotgrad/models/divergence.h>

#include "commands.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {
const char* kUsage = R"(lotgrad: attention mechanisms and their training, on the CPU.

usage: lotgrad <command> [options]      (lotgrad <command> --help for its options)

commands:
  demo              train a 2-layer MLP on a generated problem and print the loss falling
  lra               the main job: LOTFormer and a softmax baseline on generated ListOps, with a table
  train             train a classifier on an LRA task (read or generated) with progress and checkpoints
  eval              accuracy of a checkpoint on a split
  inspect           what a trained model's attention does on real examples (max weights, bounds, entropy, sums)
  plot              loss and metric curves (PNG) of one or several runs, overlaid
  report            one self-contained HTML page comparing runs: settings, curves, end figures, attention maps
  info              build, thread and BLAS settings
  probe             write a mechanism's attention matrix (and stats) for a random input
  maps              PNG attention maps of softmax, Sinkformer, LOTFormer (r = 2, 4, 16), ESPFormer on one input
  bench matmul      lotgrad matmul against raw OpenBLAS at transformer shapes
  bench ops         elementwise, softmax and layer_norm throughput (GB/s)
  bench attention   any mechanism (--attention NAME --n 512,1024,...): fwd and fwd+bwd time, peak memory
  bench attention-kernel   softmax attention: fused kernel vs reference, time and peak memory
  bench step        one LRA training step (forward, backward, AdamW): ms/step, tokens/s, peak memory
  bench delta-rule  DeltaNet's delta_rule op alone (the sizes of benchmarks/torch_deltanet.py)
  bench sinkhorn    the Sinkhorn op: forward / backward time and peak memory
  bench allreduce   under mpirun: time and bandwidth of summing a buffer across the ranks

common options: --threads N (default: all cores, or LOTGRAD_NUM_THREADS); --json where a command's help says so
lotgrad --version prints the version.
)";

// The error of a command, and its exit code. Under mpirun (several ranks) the message says
// which rank; an error one rank met alone ends every rank (MPI_Abort: the others may wait for
// it in a sum), while one every rank met together (a diverged step: they hold the same sums)
// is printed by rank 0 and each rank exits normally.
int fail(const std::string& cmd, const std::exception& e, int code, bool collective) {
  using lotgrad::dist::Comm;
  const bool several = lotgrad::dist::launched_size() > 1 && lotgrad::dist::built_with_mpi();
  if (!several) {
    std::fprintf(stderr, "lotgrad %s: error: %s\n", cmd.c_str(), e.what());
    return code;
  }
  Comm& comm = Comm::world();
  if (collective) {
    if (comm.rank() == 0) std::fprintf(stderr, "lotgrad %s: error (every rank): %s\n", cmd.c_str(), e.what());
    return code;
  }
  comm.abort("lotgrad " + cmd + ": error on " + comm.where() + " (the run stops on every rank): " + e.what(), code);
}
}  // namespace

namespace {
// Keep freed heap memory in the process. Under glibc's defaults the temporaries of a step
// that are smaller than the tensor block cache's blocks (core/tensor.cpp) were unmapped or
// trimmed when freed and page-faulted back on the next use: ZeroS's causal forward at
// n = 65,536 took 275 ms with the defaults and 189 ms with these (docs/benchmarks.md).
void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);   // below 32 MiB: the heap, not a fresh mapping each time
  mallopt(M_TRIM_THRESHOLD, 512 << 20);  // return the heap's free top to the system only past 512 MiB
#endif
}
}  // namespace

int main(int argc, char** argv) {
  keep_freed_memory();
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, stdout);
    return argc < 2 ? 1 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("lotgrad %s\n", LOTGRAD_VERSION);
    return 0;
  }
  const std::string cmd = argv[1];
  try {
    lotgrad::check_thread_env();
    const bool dp_command =
        cmd == "train" || (cmd == "bench" && argc > 2 && (!std::strcmp(argv[2], "step") || !std::strcmp(argv[2], "allreduce")));
    if (lotgrad::dist::launched_size() > 1 && !dp_command)
      throw std::invalid_argument("under mpirun only `lotgrad train`, `lotgrad bench step` and `lotgrad bench allreduce` run (data-parallel, "
                                  "docs/distributed.md); run `lotgrad " + cmd + "` as one process");
    using namespace lotgrad::cli;
    if (cmd == "demo") return cmd_demo(argc - 2, argv + 2);
    if (cmd == "info") return cmd_info(argc - 2, argv + 2);
    if (cmd == "probe") return cmd_probe(argc - 2, argv + 2);
    if (cmd == "train") return cmd_train(argc - 2, argv + 2);
    if (cmd == "eval") return cmd_eval(argc - 2, argv + 2);
    if (cmd == "inspect") return cmd_inspect(argc - 2, argv + 2);
    if (cmd == "lra") return cmd_lra(argc - 2, argv + 2);
    if (cmd == "plot") return cmd_plot(argc - 2, argv + 2);
    if (cmd == "maps") return cmd_maps(argc - 2, argv + 2);
    if (cmd == "report") return cmd_report(argc - 2, argv + 2);
    if (cmd == "bench") {
      if (argc < 3 || !std::strcmp(argv[2], "--help") || !std::strcmp(argv[2], "-h")) {
        std::fputs("lotgrad bench NAME [options]: matmul, ops, attention, attention-kernel, sinkhorn, step, delta-rule, allreduce\n"
                   "(lotgrad bench NAME --help for its options)\n", argc < 3 ? stderr : stdout);
        return argc < 3 ? 2 : 0;
      }
      const std::string which = argv[2];
      if (which == "matmul") return bench_matmul_main(argc - 3, argv + 3);
      if (which == "ops") return bench_ops_main(argc - 3, argv + 3);
      if (which == "attention") return bench_attention_main(argc - 3, argv + 3);
      if (which == "attention-kernel") return bench_attention_kernel_main(argc - 3, argv + 3);
      if (which == "step") return bench_step_main(argc - 3, argv + 3);
      if (which == "delta-rule") return bench_delta_rule_main(argc - 3, argv + 3);
      if (which == "sinkhorn") return bench_sinkhorn_main(argc - 3, argv + 3);
      if (which == "allreduce") return bench_allreduce_main(argc - 3, argv + 3);
      std::fprintf(stderr, "lotgrad bench: unknown benchmark \"%s\" (matmul, ops, attention, attention-kernel, sinkhorn, step, delta-rule, allreduce)\n", which.c_str());
      return 2;
    }
    std::fprintf(stderr, "lotgrad: unknown command \"%s\"\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const lotgrad::models::DivergenceError& e) {
    return fail(cmd, e, 1, e.collective);
  } catch (const std::invalid_argument& e) {  // a bad option or setting: refused before any work
    return fail(cmd, e, 2, false);
  } catch (const std::exception& e) {
    return fail(cmd, e, 1, false);
  }
}
