#!/usr/bin/python3
"""Side-by-side: the chunked delta rule (DeltaNet's recurrence) in PyTorch, to compare with
lotgrad's delta_rule (ops/delta_rule.h) at the same sizes.

Optional: needs Debian's python3-torch (`apt-get install python3-torch`; run it with
/usr/bin/python3). Never used by the build or the tests.

The algorithm is lotgrad's, in PyTorch's batched form (the chunkwise WY/UT form of Yang et al.
2024, arXiv:2406.06484): per chunk of C positions, with the state M = Sᵀ (dk, dv),
    L = strict-tril(diag(β) K Kᵀ),  W = (I + L)⁻¹ diag(β) K,  U = (I + L)⁻¹ diag(β) V
    (both by one batched triangular solve over every chunk at once), P = tril(Q Kᵀ),
then a loop over the chunks: U' = U − W M, O = Q M + P U', M ← M + Kᵀ U'.
The backward is PyTorch's autograd through all of it. Inputs are DeltaNet-shaped: keys of unit
norm, β in (0, 1), q scaled by 1/√d. f32, torch.set_num_threads(threads).
Prints the median forward (no graph) and forward + backward times in ms.
"""
import argparse
import statistics
import time

import torch


def delta_rule_chunked(q, k, v, beta, C):
    """q, k (B, H, n, dk), v (B, H, n, dv), beta (B, H, n) -> o (B, H, n, dv)."""
    B, H, n, dk = q.shape
    dv = v.shape[-1]
    pad = (-n) % C  # zero keys and β on the pad change nothing before them
    if pad:
        q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
        beta = torch.nn.functional.pad(beta, (0, pad))
    N = (n + pad) // C
    q, k, v = (t.reshape(B, H, N, C, -1) for t in (q, k, v))
    beta = beta.reshape(B, H, N, C, 1)
    L = torch.tril(beta * (k @ k.transpose(-1, -2)), -1)
    I_L = L + torch.eye(C, dtype=q.dtype)
    WU = torch.linalg.solve_triangular(I_L, beta * torch.cat([k, v], -1), upper=False, unitriangular=True)
    W, U = WU[..., :dk], WU[..., dk:]
    P = torch.tril(q @ k.transpose(-1, -2))
    M = q.new_zeros(B, H, dk, dv)
    outs = []
    # unbind, not q[:, :, i] in the loop: the backward of each index would zero-fill and add a
    # whole (B, H, N, C, d) gradient per chunk (O(N²) traffic; about 4x slower at n = 4096)
    for qi, ki, Wi, Ui, Pi in zip(*(t.unbind(2) for t in (q, k, W, U, P))):
        u = Ui - Wi @ M
        outs.append(qi @ M + Pi @ u)
        M = M + ki.transpose(-1, -2) @ u
    return torch.stack(outs, 2).reshape(B, H, N * C, dv)[:, :, :n]


def delta_rule_recurrent(q, k, v, beta):
    """The step-by-step recurrence, for the correctness check at small n."""
    B, H, n, dk = q.shape
    M = q.new_zeros(B, H, dk, v.shape[-1])
    outs = []
    for t in range(n):
        kt = k[:, :, t:t + 1]
        u = beta[:, :, t, None, None] * (v[:, :, t:t + 1] - kt @ M)
        M = M + kt.transpose(-1, -2) @ u
        outs.append(q[:, :, t:t + 1] @ M)
    return torch.cat(outs, 2)


def inputs(B, H, n, d, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(B, H, n, d, generator=g) / d ** 0.5
    k = torch.nn.functional.normalize(torch.randn(B, H, n, d, generator=g), dim=-1)
    v = torch.randn(B, H, n, d, generator=g)
    beta = torch.rand(B, H, n, generator=g)
    for t in (q, k, v, beta):
        t.requires_grad_(requires_grad)
    return q, k, v, beta


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--d-head", type=int, default=64)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    # the chunked form equals the recurrence (f64, a chunk that does not divide n)
    q, k, v, beta = (t.double() for t in inputs(1, 2, 37, 8))
    err = (delta_rule_chunked(q, k, v, beta, 16) - delta_rule_recurrent(q, k, v, beta)).abs().max().item()
    assert err < 1e-10, err

    fwd, both = [], []
    for _ in range(a.repeats):
        q, k, v, beta = inputs(a.batch, a.heads, a.seq_len, a.d_head)
        with torch.no_grad():
            t0 = time.perf_counter()
            delta_rule_chunked(q, k, v, beta, a.chunk)
            fwd.append(time.perf_counter() - t0)
        q, k, v, beta = inputs(a.batch, a.heads, a.seq_len, a.d_head, requires_grad=True)
        go = torch.randn(a.batch, a.heads, a.seq_len, a.d_head)
        t0 = time.perf_counter()
        delta_rule_chunked(q, k, v, beta, a.chunk).backward(go)
        both.append(time.perf_counter() - t0)
    print(f"torch {torch.__version__}, {a.threads} threads: B {a.batch}, H {a.heads}, n {a.seq_len}, d {a.d_head}, "
          f"chunk {a.chunk} (f32; chunked == recurrence to {err:.1e})")
    print(f"forward {1e3 * statistics.median(fwd):.1f} ms, forward+backward {1e3 * statistics.median(both):.1f} ms "
          f"(median of {a.repeats})")


if __name__ == "__main__":
    main()
