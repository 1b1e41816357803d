// The lotgrad command-line program's subcommands. Each takes the arguments after its name.
#pragma once
#include <string>

namespace lotgrad::cli {
int cmd_demo(int argc, char** argv);
int cmd_info(int argc, char** argv);
int cmd_probe(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_lra(int argc, char** argv);
int cmd_plot(int argc, char** argv);
int cmd_maps(int argc, char** argv);
int cmd_report(int argc, char** argv);
// A PNG of a whitespace table (a header whose column names are separated by two or more
// spaces, then numeric rows): every column against the first, coloured, numbered in a legend.
void plot_table(const std::string& table, const std::string& path);
}  // namespace lotgrad::cli

// Benchmarks (benchmarks/), linked from the lotgrad_bench library.
int bench_matmul_main(int argc, char** argv);
int bench_ops_main(int argc, char** argv);
int bench_attention_kernel_main(int argc, char** argv);
int bench_sinkhorn_main(int argc, char** argv);
int bench_attention_main(int argc, char** argv);
int bench_step_main(int argc, char** argv);
int bench_delta_rule_main(int argc, char** argv);
int bench_allreduce_main(int argc, char** argv);
