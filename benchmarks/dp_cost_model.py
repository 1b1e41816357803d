#!/usr/bin/env python3
"""Cost model of a data-parallel training step (docs/distributed.md): how the step time of a
fixed global batch grows or shrinks with the number of machines N, from four measured inputs.

  compute   T_c(N) = c * ceil(B / N)              c: seconds per example of the whole step on one machine
  all-reduce (ring) T_ar(S, N) = 2 (N - 1) alpha + 2 (N - 1) / N * S / beta
  overlap   buckets start as backward finishes them (reverse layer order); all but the last
            bucket (the embeddings, which backward reaches last) can hide behind the rest of
            backward, a share `hide` of the compute:
            unhidden(N) = T_ar(S_last, N) + max(0, T_ar(S - S_last, N) - hide * T_c(N))
  step      T(N) = T_c(N) + unhidden(N)

Defaults: the ListOps step of `lotgrad bench step` (2 layers, d 64, n 2048, softmax) as measured
on the project's 2-core machine (1120 ms for 32 examples at 2 threads), a global batch of 256;
alpha and beta fitted to `lotgrad bench allreduce` over TCP loopback, and assumed for two networks. Only the Python
standard library; prints a Markdown table.

  python3 benchmarks/dp_cost_model.py [--c SECONDS] [--batch B] [--bytes S] [--last-bytes S_LAST]
"""
import argparse
import math

NETWORKS = {  # name: (alpha seconds, beta bytes/s)
    "this machine, TCP loopback (fitted)": (8.5e-6, 2.3e9),
    "10 GbE (TCP, assumed)": (30e-6, 1.1e9),
    "1 GbE (TCP, assumed)": (50e-6, 0.11e9),
}


def t_ar(size, n, alpha, beta):
    return 0.0 if n == 1 else 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / beta


def step(n, a):
    alpha, beta = a.alpha_beta
    compute = a.c * math.ceil(a.batch / n)
    unhidden = t_ar(a.last_bytes, n, alpha, beta) + max(0.0, t_ar(a.bytes - a.last_bytes, n, alpha, beta) - a.hide * compute)
    return compute, unhidden


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--c", type=float, default=0.035, help="seconds per example of one step on one machine (2 threads)")
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--bytes", type=float, default=839592, help="bytes each rank puts into the sums per step")
    p.add_argument("--last-bytes", type=float, default=528400, help="bytes of the last bucket (embeddings)")
    p.add_argument("--hide", type=float, default=0.3, help="share of the compute that can hide the other buckets")
    p.add_argument("--alpha", type=float, help="latency per message, seconds (with --beta: one network of your own)")
    p.add_argument("--beta", type=float, help="bandwidth, bytes/s")
    a = p.parse_args()
    nets = {"given": (a.alpha, a.beta)} if a.alpha and a.beta else NETWORKS
    ns = [1, 2, 4, 8, 16, 32, 64]
    print(f"global batch {a.batch}, {a.c * 1e3:.0f} ms per example, {a.bytes / 1e3:.0f} kB per rank per step "
          f"({a.last_bytes / 1e3:.0f} kB in the last bucket)\n")
    print("| network | " + " | ".join(f"N = {n}" for n in ns) + " |")
    print("|---|" + "---|" * len(ns))
    for name, ab in nets.items():
        a.alpha_beta = ab
        cells = []
        t1 = sum(step(1, a))
        for n in ns:
            comp, un = step(n, a)
            t = comp + un
            cells.append(f"{t * 1e3:.0f} ms ({t1 / t:.1f}x, {100 * un / t:.0f}% comm)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
