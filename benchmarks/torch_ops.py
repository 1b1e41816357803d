#!/usr/bin/python3
"""Side-by-side: PyTorch's elementwise exp, sigmoid, tanh, softplus and gelu on the inputs of
`lotgrad bench ops` (16.8 M f32 from a standard normal), to compare with its rows.

Optional: needs Debian's python3-torch (`apt-get install python3-torch`; run it with
/usr/bin/python3). Never used by the build or the tests.

Each result is checked against float64 before it is timed (max relative error over a sample).
Prints the median time in ms and GB/s (input read once, output written once, as lotgrad does),
twice: y = op(x) (a fresh output, as a graph op makes one; PyTorch's CPU allocator hands back
new pages each time, so this includes their first-touch faults) and op(x, out=y) into a buffer
that is reused (the kernel alone).
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

OPS = {  # name: (y = op(x), op(x, out=y))
    "gelu": (F.gelu, lambda x, y: torch._C._nn.gelu(x, out=y)),
    "exp": (torch.exp, lambda x, y: torch.exp(x, out=y)),
    "sigmoid": (torch.sigmoid, lambda x, y: torch.sigmoid(x, out=y)),
    "tanh": (torch.tanh, lambda x, y: torch.tanh(x, out=y)),
    "softplus": (F.softplus, lambda x, y: torch._C._nn.softplus(x, 1, 20, out=y)),
}


def median_ms(fn, runs):
    for _ in range(2):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.n, generator=g, dtype=torch.float32)
    sample = x[:: 9973].double()
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, {a.runs} runs (median), n = {a.n}")
    out = torch.empty_like(x)
    for name, (fn, fn_out) in OPS.items():
        ref = fn(sample)
        for y in (fn(x), fn_out(x, out)):
            err = ((y[:: 9973].double() - ref).abs() / (1 + ref.abs())).max().item()
            assert err < 1e-5, f"{name}: error {err}"
        for form, ms in (("y = op(x)", median_ms(lambda: fn(x), a.runs)), ("out=", median_ms(lambda: fn_out(x, out), a.runs))):
            print(f"{name:<10} {a.n} f32  torch {form:<10} {ms:8.3f} ms  {2 * 4 * a.n / ms / 1e6:6.1f} GB/s")

if __name__ == "__main__":
    main()
