#!/usr/bin/python3
"""Side-by-side: one LRA ListOps training step in PyTorch, to compare with

    lotgrad bench step --attention lotformer --batch 32 --seq-len 2048 --r 4 --eps 0.1 \
        --half-steps 50 --grad implicit --threads 2

Optional: needs Debian's python3-torch (`apt-get install python3-torch`; run it with
/usr/bin/python3). Never used by the build or the tests. The model is the same 2-layer LRA
classifier (d 64, 2 heads, MLP 128, learned positions, final LayerNorm, mean pooling,
64 -> 128 -> ReLU -> 10 head); LOTFormer is written the way the public reference code does
it: log-domain Sinkhorn, row half-step first, unrolled through autograd, correct 1/b glue.
Prints ms per step (median), tokens/s and the process's peak RSS.
"""
import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinkhorn_log(S, eps, log_a, log_b, half_steps):
    """Log-plan of entropic OT with similarity S (..., n, m); row half-step first."""
    f = torch.zeros(S.shape[:-1], dtype=S.dtype)
    g = torch.zeros(S.shape[:-2] + S.shape[-1:], dtype=S.dtype)
    for i in range(half_steps):
        if i % 2 == 0:
            f = eps * log_a - eps * torch.logsumexp((S + g.unsqueeze(-2)) / eps, dim=-1)
        else:
            g = eps * log_b - eps * torch.logsumexp((S + f.unsqueeze(-1)) / eps, dim=-2)
    return (S + f.unsqueeze(-1) + g.unsqueeze(-2)) / eps


class LOTAttention(nn.Module):
    def __init__(self, heads, d, r, eps, half_steps):
        super().__init__()
        self.pivots = nn.Parameter(torch.randn(heads, r, d) * 0.02)
        self.mass_logits = nn.Parameter(torch.zeros(heads, r))
        self.eps, self.half_steps = eps, half_steps

    def forward(self, q, k, v):  # (B, H, n, d)
        n, d = q.shape[-2], q.shape[-1]
        log_b = torch.log_softmax(self.mass_logits, -1).unsqueeze(0)       # (1, H, r)
        log_a = torch.full((1, 1, n), -math.log(n))
        s1 = (q @ self.pivots.transpose(-1, -2) / math.sqrt(d)).clamp(-50, 50)   # (B, H, n, r)
        s2 = (self.pivots @ k.transpose(-1, -2) / math.sqrt(d)).clamp(-50, 50)   # (B, H, r, n)
        g1 = sinkhorn_log(s1, self.eps, log_a, log_b, self.half_steps).exp()
        g2 = sinkhorn_log(s2, self.eps, log_b, log_a, self.half_steps).exp()
        kv = (g2 @ v) * torch.exp(-log_b).unsqueeze(-1)                      # (B, H, r, d)
        return n * (g1 @ kv)


class Block(nn.Module):
    def __init__(self, d, heads, mlp, attention, args):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Dropout(0.1), nn.Linear(mlp, d), nn.Dropout(0.1))
        self.drop = nn.Dropout(0.1)
        self.attention = attention
        if attention == "lotformer":
            self.lot = LOTAttention(heads, d // heads, args.r, args.eps, args.half_steps)

    def forward(self, x):
        B, n, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, n, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.attention == "lotformer":
            o = self.lot(q, k, v)
        else:
            o = F.scaled_dot_product_attention(q, k, v) if hasattr(F, "scaled_dot_product_attention") else \
                torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v
        x = x + self.drop(self.out(o.permute(0, 2, 1, 3).reshape(B, n, D)))
        return x + self.mlp(self.ln2(x))


class Classifier(nn.Module):
    def __init__(self, args):
        super().__init__()
        d = 64
        self.embed = nn.Embedding(32, d)
        self.pos = nn.Embedding(args.seq_len, d)
        self.blocks = nn.ModuleList([Block(d, 2, 128, args.attention, args) for _ in range(2)])
        self.ln = nn.LayerNorm(d)
        self.head = nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x).mean(1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attention", default="lotformer", choices=["lotformer", "softmax"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--r", type=int, default=4)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--half-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Classifier(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0)
    tokens = torch.randint(1, 16, (args.batch, args.seq_len))
    labels = torch.randint(0, 10, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss.item()

    first = step()  # verify before timing
    if not math.isfinite(first):
        raise SystemExit("loss is not finite")
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"torch {torch.__version__} {args.attention} B={args.batch} n={args.seq_len} threads={args.threads}: "
          f"{med * 1e3:.1f} ms/step (median of {args.runs}), {args.batch * args.seq_len / med:.0f} tokens/s, "
          f"peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
