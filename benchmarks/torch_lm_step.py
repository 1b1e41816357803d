#!/usr/bin/python3
"""Side-by-side: one training step of the causal character-level decoder in PyTorch, to compare with

    lotgrad bench step --task lm --attention softmax --batch 16 --seq-len 256 --depth 2 --d-model 128 \
        --heads 2 --mlp 512 --threads 2

Optional: needs Debian's python3-torch (`apt-get install python3-torch`; run it with
/usr/bin/python3). Never used by the build or the tests. The model is lotgrad's DecoderLM
(models/decoder.h) as `bench step --task lm` builds it: token embedding (97 ids) tied to the
output head, learned positions, pre-LN blocks with a fused QKV projection, causal softmax or
causal sliding-window attention as a boolean band mask (F.scaled_dot_product_attention where
PyTorch has it, >= 2.0; the explicit masked softmax in Debian 12's 1.13), a GELU MLP, a final LayerNorm,
cross-entropy at every position; no dropout; AdamW, gradient clipping at 5. Prints ms per
step (median), tokens/s and the process's peak RSS.
"""
import argparse
import math
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 97


class Block(nn.Module):
    def __init__(self, d, heads, mlp, mask):
        super().__init__()
        self.heads, self.mask = heads, mask
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d)) if mlp > 0 else None

    def forward(self, x):
        B, n, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, n, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if hasattr(F, "scaled_dot_product_attention"):  # PyTorch >= 2.0: its fused kernels
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)  # (B, H, n, dh)
        else:  # PyTorch 1.13 (Debian 12): the explicit masked softmax
            s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            o = torch.softmax(s.masked_fill(~self.mask, float("-inf")), -1) @ v
        x = x + self.out(o.permute(0, 2, 1, 3).reshape(B, n, D))
        return x + self.mlp(self.ln2(x)) if self.mlp is not None else x


class DecoderLM(nn.Module):
    def __init__(self, args, mask):
        super().__init__()
        d = args.d_model
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(args.seq_len, d)
        self.blocks = nn.ModuleList([Block(d, args.heads, args.mlp, mask) for _ in range(args.depth)])
        self.ln = nn.LayerNorm(d)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]
        for b in self.blocks:
            x = b(x)
        return self.ln(x) @ self.embed.weight.t()  # tied head: (B, n, VOCAB)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attention", default="softmax", choices=["softmax", "window"])
    p.add_argument("--window", type=int, default=64, help="window: keys i - w < j <= i")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--mlp", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    i = torch.arange(args.seq_len)
    width = args.window if args.attention == "window" else args.seq_len
    mask = (i[:, None] - i[None, :] >= 0) & (i[:, None] - i[None, :] < width)  # (n, n) bool, True = attend
    model = DecoderLM(args, mask)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0)
    tokens = torch.randint(0, VOCAB, (args.batch, args.seq_len))
    targets = torch.randint(0, VOCAB, (args.batch * args.seq_len,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens).reshape(-1, VOCAB), targets)
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
    print(f"torch {torch.__version__} lm {args.attention} B={args.batch} n={args.seq_len} threads={args.threads}: "
          f"{med * 1e3:.1f} ms/step (median of {args.runs}), {args.batch * args.seq_len / med:.0f} tokens/s, "
          f"peak RSS {rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
