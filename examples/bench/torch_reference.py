#!/usr/bin/env python3
"""PyTorch reference for `diffnas bench`: the same UNet, built from the same genome JSON, timed on
the same work, written in the same JSON schema.

    python3 examples/bench/torch_reference.py --genome g.json --batch-size 128 --device cuda \
        --mode compile --precision tf32 --expect-params 35746307 --json out.json

What is timed (as `diffnas bench` does):
  * train: one training step = eps-prediction MSE loss, backward, global-norm clip (1.0),
    AdamW (lr 2e-4, betas 0.9/0.999, eps 1e-8, no weight decay), EMA update (decay 0.9999);
    t and eps drawn on the device each step;
  * sample: one DDIM step (eta 0, x0 clipped to [-1, 1]) of the denoiser under inference_mode.
Warm-up steps (and torch.compile's compilation) are timed apart and excluded from the rates.

The network is derived from the genome here, independently of the Rust code (ALGORITHMS.md
section 1: the DDPM/IDDPM UNet); `--expect-params` (the count `diffnas genome cost --json`
prints) makes a mismatch an error, so a table never compares two different networks. MACs
are counted with forward hooks and reported next to diffnas's cost-model count.
"""

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---------------------------------------------------------------- genome -> layout (mirrors
# Genome::layout: skip widths are pushed per encoder block and per downsample, popped by the
# decoder's blocks in reverse order)


def hidden_channels(g, out_channels, hidden_mult):
    groups = max(g["norm_groups"], 1)
    # Rust's f64::round rounds halves away from zero; Python's round() would round them to even.
    n = max(math.floor(out_channels * hidden_mult / groups + 0.5), 1)
    return int(n) * groups


def heads_for(g, channels):
    hc = g["attention"].get("head_channels")
    if hc:
        return max(channels // hc, 1)
    return g["attention"]["heads"]


def layout(g):
    ch = g["base_channels"]
    levels = len(g["encoder"])
    res = [g["image"]["size"] >> i for i in range(levels)]
    attn = set(g["attention"]["resolutions"])

    def block(cin, cout, gene, r, a):
        return dict(
            cin=cin,
            hidden=hidden_channels(g, cout, gene["hidden_mult"]),
            cout=cout,
            kernels=tuple(gene["kernels"]),
            res=r,
            attention=a,
        )

    skips, cur, encoder = [ch], ch, []
    for l, level in enumerate(g["encoder"]):
        out = ch * level["channel_mult"]
        blocks = []
        for gene in level["res_blocks"]:
            blocks.append(block(cur, out, gene, res[l], res[l] in attn))
            cur = out
            skips.append(cur)
        down = l + 1 < levels
        if down:
            skips.append(cur)
        encoder.append((blocks, down))
    mid = g["middle"]["res_blocks"]
    r_mid = res[levels - 1]
    middle = [block(cur, cur, mid[0], r_mid, True), block(cur, cur, mid[1], r_mid, False)]
    decoder = []
    for d, level in enumerate(g["decoder"]):
        l = levels - 1 - d
        out = ch * g["encoder"][l]["channel_mult"]
        blocks = []
        for gene in level["res_blocks"]:
            blocks.append(block(cur + skips.pop(), out, gene, res[l], res[l] in attn))
            cur = out
        decoder.append((blocks, l > 0))
    return encoder, middle, decoder, cur


# ---------------------------------------------------------------- the network


def conv(cin, cout, k, stride=1, zero=False):
    c = nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
    if zero:
        nn.init.zeros_(c.weight)
        nn.init.zeros_(c.bias)
    return c


class TimeEmbedding(nn.Module):
    def __init__(self, dim, temb):
        super().__init__()
        self.dim = dim
        self.lin1 = nn.Linear(dim, temb)
        self.lin2 = nn.Linear(temb, temb)
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
        self.register_buffer("freqs", freqs.float(), persistent=False)

    def forward(self, t):
        args = t.float()[:, None] * self.freqs[None]
        parts = [torch.cos(args), torch.sin(args)]
        if self.dim % 2 == 1:
            parts.append(torch.zeros_like(args[:, :1]))
        return self.lin2(F.silu(self.lin1(torch.cat(parts, 1))))


class ResBlock(nn.Module):
    def __init__(self, s, groups, temb, scale_shift, dropout):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, s["cin"])
        self.conv1 = conv(s["cin"], s["hidden"], s["kernels"][0])
        self.emb = nn.Linear(temb, (2 if scale_shift else 1) * s["hidden"])
        self.norm2 = nn.GroupNorm(groups, s["hidden"])
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv(s["hidden"], s["cout"], s["kernels"][1], zero=True)
        self.skip = conv(s["cin"], s["cout"], 1) if s["cin"] != s["cout"] else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = F.silu(self.norm2(h) * (1 + scale) + shift)
        else:
            h = F.silu(self.norm2(h + e))
        h = self.conv2(self.dropout(h))
        return (self.skip(x) if self.skip is not None else x) + h


class Attention(nn.Module):
    def __init__(self, channels, heads, groups):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = conv(channels, channels, 1, zero=True)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (qkv[:, i].transpose(2, 3) for i in range(3))  # [B, heads, L, dh]
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(2, 3).reshape(b, c, h, w))


class Unit(nn.Module):
    def __init__(self, s, g, temb):
        super().__init__()
        groups = g["norm_groups"]
        self.res = ResBlock(s, groups, temb, g["scale_shift_norm"], g["dropout"])
        self.attn = Attention(s["cout"], heads_for(g, s["cout"]), groups) if s["attention"] else None

    def forward(self, x, emb):
        h = self.res(x, emb)
        return self.attn(h) if self.attn is not None else h


class Unet(nn.Module):
    def __init__(self, g):
        super().__init__()
        encoder, middle, decoder, head = layout(g)
        ch, temb = g["base_channels"], g["base_channels"] * g["time_embed_mult"]
        self.time = TimeEmbedding(ch, temb)
        self.stem = conv(g["image"]["channels"], ch, 3)
        self.enc = nn.ModuleList(nn.ModuleList(Unit(s, g, temb) for s in blocks) for blocks, _ in encoder)
        self.down = nn.ModuleList(
            conv(blocks[-1]["cout"], blocks[-1]["cout"], 3, stride=2) if down else nn.Identity()
            for blocks, down in encoder
        )
        self.has_down = [down for _, down in encoder]
        self.mid = nn.ModuleList(Unit(s, g, temb) for s in middle)
        self.dec = nn.ModuleList(nn.ModuleList(Unit(s, g, temb) for s in blocks) for blocks, _ in decoder)
        self.up = nn.ModuleList(
            conv(blocks[-1]["cout"], blocks[-1]["cout"], 3) if up else nn.Identity() for blocks, up in decoder
        )
        self.has_up = [up for _, up in decoder]
        self.head_norm = nn.GroupNorm(g["norm_groups"], head)
        self.head_conv = conv(head, g["image"]["channels"], 3, zero=True)

    def forward(self, x, t):
        emb = F.silu(self.time(t))
        h = self.stem(x)
        skips = [h]
        for units, down, has in zip(self.enc, self.down, self.has_down):
            for u in units:
                h = u(h, emb)
                skips.append(h)
            if has:
                h = down(h)
                skips.append(h)
        for u in self.mid:
            h = u(h, emb)
        for units, up, has in zip(self.dec, self.up, self.has_up):
            for u in units:
                h = u(torch.cat([h, skips.pop()], 1), emb)
            if has:
                h = up(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.head_conv(F.silu(self.head_norm(h)))


def count_macs(model, x, t):
    """Convolutions, linear layers and the two attention matmuls, as diffnas's cost model."""
    total = [0]

    def on_conv(m, inp, out):
        total[0] += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def on_linear(m, inp, out):
        total[0] += m.in_features * m.out_features

    def on_attn(m, inp, out):
        _, c, h, w = out.shape
        total[0] += 2 * (h * w) * (h * w) * c

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(on_linear))
        elif isinstance(m, Attention):
            hooks.append(m.register_forward_hook(on_attn))
    with torch.no_grad():
        model(x[:1], t[:1])
    for h in hooks:
        h.remove()
    return total[0]


# ---------------------------------------------------------------- the timed work


def linear_alphas_cumprod(steps=1000, device="cpu"):
    betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float().to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def autocast(device, precision):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "f16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return torch.autocast(device_type=device.type, enabled=False)


def phase(name):
    """A record_function marker when --profile-ops is on (attributes aten ops to step phases)."""
    if PROFILING:
        return torch.profiler.record_function("phase:" + name)
    return contextlib.nullcontext()


PROFILING = False


def profile_ops(timed, steps, path):
    """Run `timed(steps)` once more under torch.profiler and write every op's self CPU time,
    summed per (op, phase), to `path`."""
    global PROFILING
    PROFILING = True
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        timed(steps)
    PROFILING = False
    agg = {}
    for e in prof.events():
        ph, p = "other", e.cpu_parent
        while p is not None:
            if p.name.startswith("phase:"):
                ph = p.name[len("phase:"):]
                break
            p = p.cpu_parent
        if e.name.startswith("phase:"):
            key = (e.name, e.name[len("phase:"):])
        else:
            key = (e.name, ph)
        agg[key] = agg.get(key, 0.0) + e.self_cpu_time_total
    ops = [dict(name=n, phase=ph, self_us=v) for (n, ph), v in sorted(agg.items(), key=lambda kv: -kv[1])]
    with open(path, "w") as f:
        json.dump(dict(steps=steps, threads=torch.get_num_threads(), ops=ops), f, indent=1)


def bench_train(model, net, args, device, abar):
    ema = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=fused)
    c, s = args.channels, args.size
    x0 = torch.rand(args.batch_size, c, s, s, device=device) * 2 - 1
    decay = 0.9999
    # f16 autocast trains with dynamic loss scaling, as diffnas's --precision f16 does.
    scaler = torch.amp.GradScaler(device.type) if args.precision == "f16" else None

    def step(x0):
        with phase("inputs"):
            t = torch.randint(0, abar.numel(), (x0.shape[0],), device=device)
            eps = torch.randn_like(x0)
            a = abar[t][:, None, None, None]
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with phase("forward"), autocast(device, args.precision):
            loss = F.mse_loss(net(x_t, t).float(), eps)
        with phase("backward"):
            opt.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler else loss).backward()
        with phase("clip"):
            if scaler:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        with phase("optimizer"):
            if scaler:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
        with phase("ema"), torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        return loss.detach()

    def timed(n):
        t0 = time.perf_counter()
        loss = None
        for _ in range(n):
            loss = step(x0)
        if loss is not None:
            loss.item()
        sync(device)
        return time.perf_counter() - t0

    model.train()
    warm = timed(args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sec = timed(args.train_steps)
    sps = args.train_steps / sec
    if args.profile_ops:
        profile_ops(timed, args.train_steps, args.profile_ops)
    return dict(
        steps=args.train_steps,
        seconds=sec,
        steps_per_s=sps,
        images_per_s=sps * args.batch_size,
        warmup_seconds=warm,
        achieved_gflops=sps * args.batch_size * args.macs * 6 / 1e9,
    )


def bench_sample(model, net, args, device, abar):
    model.eval()
    c, s, n = args.channels, args.size, args.batch_size

    def timed(evals):
        ts = [int(round(i * (abar.numel() - 1) / max(evals - 1, 1))) for i in range(evals)][::-1]
        x = torch.randn(n, c, s, s, device=device, generator=torch.Generator(device).manual_seed(0))
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast(device, args.precision):
            for i, t in enumerate(ts):
                a_t = abar[t]
                a_prev = abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=device)
                tt = torch.full((n,), t, device=device, dtype=torch.long)
                with phase("denoiser"):
                    eps = net(x, tt).float()
                with phase("sampler"):
                    x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
                    eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
                    x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            x.sum().item()
        return time.perf_counter() - t0

    warm = timed(args.warmup) if args.warmup > 0 else 0.0
    sec = timed(args.sample_evals)
    rate = args.sample_evals * n / sec
    if args.profile_ops:
        profile_ops(timed, args.sample_evals, args.profile_ops)
    return dict(
        evals=args.sample_evals,
        seconds=sec,
        image_steps_per_s=rate,
        images_per_s_50_steps=rate / 50,
        warmup_seconds=warm,
        achieved_gflops=rate * args.macs * 2 / 1e9,
    )


def device_info(device):
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return dict(
            backend="torch-cuda",
            name=p.name,
            api=f"CUDA {torch.version.cuda}",
            device_type="DiscreteGpu",
            driver=f"cc {p.major}.{p.minor}",
        )
    if device.type == "mps":
        return dict(backend="torch-mps", name="Apple GPU", api="Metal", device_type="IntegratedGpu", driver=None)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(
        backend="torch-cpu",
        name=f"{name} ({torch.get_num_threads()} threads)",
        api=None,
        device_type="Cpu",
        driver=None,
    )


def matmul_rate(n, precision, device):
    """GFLOP/s of ten chained n x n matmuls (each multiplies the previous product; b scaled by
    1/sqrt(n) keeps values near unit size) after two warm-ups, the last product summed: the
    same probe as `diffnas bench --peak`'s, through cuBLAS (or the CPU's BLAS). f32 and tf32
    follow the backend flags set for the run; bf16 and f16 multiply in that type."""
    dtype = {"bf16": torch.bfloat16, "f16": torch.float16}.get(precision, torch.float32)
    a = torch.randn(n, n, device=device).to(dtype)
    b = (torch.randn(n, n, device=device) / n**0.5).to(dtype)

    def chain(k):
        c = a
        for _ in range(k):
            c = c @ b
        return float(c.float().sum())

    with torch.inference_mode():
        chain(2)
        t0 = time.perf_counter()
        chain(10)
        secs = time.perf_counter() - t0
    return 2.0 * n**3 * 10 / secs / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genome", required=True, help="genome JSON file (diffnas genome show PRESET > g.json)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument(
        "--precision",
        choices=["f32", "tf32", "bf16", "f16"],
        default="f32",
        help="f32: strict fp32 matmuls/convs; tf32: TF32 tensor cores (Ampere and later); bf16: autocast; "
        "f16: autocast with dynamic loss scaling (GradScaler)",
    )
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--sample-evals", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ap.add_argument("--expect-params", type=int, help="fail unless the built network has exactly this many")
    ap.add_argument("--macs", type=int, help="MACs per image to rate against (default: counted here)")
    ap.add_argument("--genome-hash", default="", help="diffnas's hash of the genome, copied to the report")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument(
        "--matmul-probe",
        type=int,
        default=0,
        metavar="N",
        help="after the benchmark, also time ten chained N x N matmuls in the run's precision "
        "(as `diffnas bench --peak` times Burn's), reported as peak.matmul_gflops; 0: skip",
    )
    ap.add_argument(
        "--profile-ops",
        help="after the timed steps, profile the same number once more with torch.profiler and write "
        "each aten op's self CPU time per step phase to this JSON file (examples/bench/op_profile.py)",
    )
    args = ap.parse_args()

    if args.batch_size < 1:
        sys.exit(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tf32 = args.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # autotuned convolutions, as Burn's autotune

    try:
        with open(args.genome) as f:
            g = json.load(f)
        g = g.get("genome", g)  # also accepts `diffnas genome cost --json` output
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"--genome {args.genome}: {e}")
    args.channels, args.size = g["image"]["channels"], g["image"]["size"]

    torch.manual_seed(args.seed)
    model = Unet(g).to(device)
    params = sum(p.numel() for p in model.parameters())
    if args.expect_params is not None and params != args.expect_params:
        sys.exit(
            f"{args.genome}: the PyTorch network has {params} parameters but diffnas builds "
            f"{args.expect_params}: the two builders disagree, refusing to compare them"
        )
    probe_x = torch.zeros(1, args.channels, args.size, args.size, device=device)
    probe_t = torch.zeros(1, dtype=torch.long, device=device)
    counted = count_macs(model, probe_x, probe_t)
    if args.macs is None:
        args.macs = counted
    abar = linear_alphas_cumprod(device=device)
    # What torch.compile sees is the network, as a user would compile it (training and
    # inference get their own graphs); the optimizer runs eagerly with fused/foreach kernels.
    net = torch.compile(model) if args.mode == "compile" else model

    train = bench_train(model, net, args, device, abar) if args.train_steps > 0 else None
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    sample = bench_sample(model, net, args, device, abar) if args.sample_evals > 0 else None
    probe = None
    if args.matmul_probe > 0:
        try:
            probe = dict(matmul_gflops=matmul_rate(args.matmul_probe, args.precision, device), matmul_n=args.matmul_probe)
        except (RuntimeError, MemoryError) as e:  # the benchmark's rows stand without the probe
            probe = dict(matmul_error=str(e), matmul_n=args.matmul_probe)
    report = dict(
        tool="pytorch",
        version=torch.__version__,
        genome=args.genome,
        genome_hash=args.genome_hash,
        params=params,
        macs_per_image=args.macs,
        macs_counted_here=counted,
        batch_size=args.batch_size,
        device=device_info(device),
        mode=args.mode,
        precision=args.precision,
        train=train,
        sample=sample,
        extract=None,
        device_bytes_reserved=torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None,
        peak_bytes_allocated_train=peak,
        peak=probe,
    )
    text = json.dumps(report, indent=2)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
