#!/usr/bin/env python3
"""Where a CPU training step and a CPU sampling step spend their time, diffnas (flex) beside
PyTorch, op by op, for the same genome and batch size.

    python3 examples/bench/op_profile.py --genome tiny --batch-size 8 --threads 1
    python3 examples/bench/op_profile.py --genome examples/bench/genomes/fmnist-evolution-best.json \
        --batch-size 32 --threads 2 --out bench-results/ops-evo-b32

diffnas: `diffnas bench --device flex` runs under `perf record --call-graph dwarf` (Debian's
linux-perf; software cpu-clock sampling, so it works in a VM without hardware counters), and
every sample is attributed from its call stack: the step phase (inputs, forward, backward, clip,
AdamW, EMA; the denoiser or the sampler update when sampling), the Burn op or autodiff node it
ran in, and whether its leaf was allocation (malloc, page faults, zeroing). With --threads 1
every sample sits on the calling thread, so the attribution is exact; with more threads the
work rayon hands to its pool loses the calling context and lands in a "pool worker" category.

PyTorch: torch_reference.py's own step, profiled with torch.profiler (self CPU time of every
aten op, phase from record_function markers), with the same thread count.

Both are reduced to one set of categories, so the table reads as a gap per category. Output:
--out/profile.json (both profiles, every row) and profile.md (the tables).
"""

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

CATEGORIES = [
    "conv forward",
    "conv data grad",
    "conv weight grad",
    "conv bias grad",
    "conv backward (data + weight + bias)",
    "GroupNorm",
    "SiLU",
    "attention (matmuls, softmax)",
    "linear (time embedding)",
    "other element-wise",
    "copies and layout (cat, slice, expand, contiguous)",
    "allocation (malloc, page faults, zeroing)",
    "loss and inputs",
    "global-norm clip",
    "AdamW",
    "EMA",
    "sampler update",
    "autodiff / dispatch bookkeeping",
    "pool worker (context lost)",
    "other",
]

# ---------------------------------------------------------------- diffnas: perf stacks

ALLOC_LEAF = re.compile(
    r"malloc|_int_free|free\b|cfree|memalign|posix_memalign|realloc|calloc|clear_page|page_fault|"
    r"do_anonymous_page|alloc_pages|get_page_from_freelist|unmap|munmap|mmap|memset|__memset|zap_|"
    r"free_pages|folio|tlb_|_raw_spin|release_pages|lru_|mas_|vma_",
)
COPY_FRAME = re.compile(
    r"into_contiguous|to_contiguous|copy_2d_tiled|float_cat|ops::cat::|float_slice|ops::slice::|"
    r"float_expand|ops::expand::|float_permute|float_swap_dims|float_reshape|narrow|__memmove|memcpy|"
    r"float_repeat|float_gather|float_scatter|slice_assign|float_pad",
)


def frame_name(line):
    # "    addr symbol+0xoff (dso)" -> "symbol"
    parts = line.strip().split(" ", 1)
    if len(parts) < 2:
        return ""
    sym = parts[1]
    sym = re.sub(r"\+0x[0-9a-f]+ \(.*$", "", sym)
    sym = re.sub(r" \(.*\)$", "", sym)
    return sym


def perf_stacks(path):
    """Yield (thread, [frames leaf..root]) per sample of `perf script` output."""
    stack, thread = [], None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                if thread is not None:
                    yield thread, stack
                stack, thread = [], None
                continue
            if not line.startswith((" ", "\t")):
                m = re.match(r"^(\S+)\s+(\d+)(?:/(\d+))?", line)
                thread = (m.group(1), m.group(3) or m.group(2)) if m else ("?", "?")
                continue
            stack.append(frame_name(line))
    if thread is not None:
        yield thread, stack


def node_of(frames):
    """The autodiff node a backward sample runs in: `conv2d::Conv2DWithBias`, ours by name."""
    for fr in frames:
        m = re.search(r">>::([a-z_0-9]+)::([A-Za-z0-9]+) as burn_autodiff::ops::backward::Backward", fr)
        if m:
            return f"{m.group(1)}::{m.group(2)}"
        m = re.search(r"<diffnas::[a-z_0-9:]*::([A-Za-z0-9]+) as burn_autodiff::ops::backward::Backward", fr)
        if m:
            return "diffnas::" + m.group(1)
    return None


def op_of(frames):
    """The outermost backend op (Flex primitive) of a sample, e.g. `float_mul`, `conv2d`, or
    one of our kernels (`cpu::conv::forward`)."""
    op = None
    for fr in frames:
        m = re.search(r"diffnas::cpu::(conv|norm)::([a-z_0-9]+)", fr)
        if m:
            op = f"cpu::{m.group(1)}::{m.group(2)}"
            continue
        m = re.search(r"for burn_flex::backend::Flex>::([a-z_0-9]+)", fr)
        if m and op is None:
            op = m.group(1)
        m = re.search(r"burn_flex::ops::([a-z_0-9]+)::([a-z_0-9]+)", fr)
        if m and op is None:
            op = f"{m.group(1)}::{m.group(2)}"
    return op


# What a stack is computing, from its frames alone (no step phase needed): our kernels by
# function, Burn's by op. First match wins.
KERNEL_RULES = [
    (r"cpu::conv::weight_grad_image", "conv weight grad"),
    (r"cpu::conv::input_grad_image", "conv data grad"),
    (r"cpu::math::sum[\s\S]*cpu::conv::backward", "conv bias grad"),
    (r"cpu::conv::backward", "conv backward (data + weight + bias)"),
    (r"cpu::conv::forward", "conv forward"),
    (r"cpu::norm::", "GroupNorm"),
    (r"conv2d_weight_backward|weight_grad_no_groups", "conv weight grad"),
    (r"conv2d_x_backward|conv_transpose", "conv data grad"),
    (r"conv2d_bias_backward", "conv bias grad"),
]


def kernel_category(joined):
    for rx, cat in KERNEL_RULES:
        if re.search(rx, joined):
            return cat
    return None


def classify_diffnas(frames, main_tids, tid, mode):
    joined = "\n".join(frames)
    leaf = frames[0] if frames else ""
    alloc = bool(ALLOC_LEAF.search(leaf))
    in_main = tid in main_tids
    kernel = kernel_category(joined)
    if not in_main and ("rayon" in joined or "gemm" in joined):
        # A sample on a pool thread: what ran is known from its frames, not the step phase.
        if kernel:
            return kernel, "pool", alloc, op_of(frames) or "?"
        return "pool worker (context lost)", "pool", alloc, op_of(frames) or "?"
    # Phases
    if mode == "train":
        if "ema_update" in joined or "ema::Update" in joined or "ema::Collect" in joined:
            phase = "ema"
        elif "clip_global_norm" in joined or "train::clip" in joined:
            phase = "clip"
        elif "burn_optim" in joined or "ModuleOptimizer" in joined or "adamw" in joined.lower():
            phase = "optimizer"
        elif "execute_steps" in joined or "backward_impl" in joined or "Backward<" in joined:
            phase = "backward"
        elif "Unet::run" in joined or "Objective" in joined or "Unet::forward" in joined or "diffnas::model" in joined:
            phase = "forward"
        elif "step_inputs" in joined or "q_sample" in joined or "train_step" in joined:
            phase = "inputs"
        else:
            phase = "other"
    else:
        if "Unet::run" in joined or "Unet::forward" in joined or "predict_eps" in joined or "diffnas::model" in joined:
            phase = "denoiser"
        elif "sampler" in joined or "SamplingRun" in joined or "diffusion::" in joined:
            phase = "sampler"
        else:
            phase = "other"

    node = node_of(frames) if phase == "backward" else None
    op = op_of(frames) or "?"
    cat = None
    if phase == "ema":
        cat = "EMA"
    elif phase == "clip":
        cat = "global-norm clip"
    elif phase == "optimizer":
        cat = "AdamW"
    elif phase in ("inputs",):
        cat = "loss and inputs"
    elif phase == "sampler":
        cat = "sampler update"
    elif phase == "other":
        cat = "other"
    elif kernel:
        cat = kernel
    elif phase == "backward":
        low = (node or "").lower()
        if node is None:
            cat = "autodiff / dispatch bookkeeping"
        elif "conv" in low:
            cat = "conv backward (data + weight + bias)"
        elif "norm" in low:
            cat = "GroupNorm"
        elif "sigmoid" in low or "silu" in low:
            cat = "SiLU"
        elif "matmul" in low:
            cat = "attention (matmuls, softmax)" if "attention" in joined else "linear (time embedding)"
        elif "mean_dim" in low or "sqrt" in low or "powi" in low or "var" in low:
            # Only Burn's GroupNorm reduces or takes square roots in the UNet's graph.
            cat = "GroupNorm"
        elif "softmax" in low or "exp" in low or "max" in low:
            cat = "attention (matmuls, softmax)"
        elif re.search(r"cat|slice|reshape|expand|swap|permute|narrow|repeat", low):
            cat = "copies and layout (cat, slice, expand, contiguous)"
        else:
            cat = "other element-wise"
    else:  # forward / denoiser
        if re.search(r"group_norm|GroupNorm|norm_act|group_norm_act", joined):
            cat = "GroupNorm"
        elif re.search(r"multi_head_attention|softmax", joined):
            cat = "attention (matmuls, softmax)"
        elif re.search(r"activation::silu|silu<|float_sigmoid|sigmoid", joined):
            cat = "SiLU"
        elif re.search(r"conv2d|conv::forward|ops::conv::", joined):
            cat = "conv forward"
        elif re.search(r"Linear::forward|TimeEmbedding", joined):
            cat = "linear (time embedding)"
        elif re.search(r"mse|loss", joined) and "Unet::run" not in joined:
            cat = "loss and inputs"
        elif COPY_FRAME.search(joined):
            cat = "copies and layout (cat, slice, expand, contiguous)"
        elif op != "?":
            cat = "other element-wise"
        else:
            cat = "autodiff / dispatch bookkeeping"
    return cat, phase, alloc, (node or op)


def run_diffnas(a, mode, out):
    perf = shutil.which("perf")
    if not perf:
        sys.exit("perf not found: install Debian's linux-perf (apt-get install linux-perf)")
    data = os.path.join(out, f"diffnas-{mode}.perf.data")
    steps = ["--train-steps", str(a.steps), "--sample-evals", "0"] if mode == "train" else \
        ["--train-steps", "0", "--sample-evals", str(a.steps)]
    cmd = [perf, "record", "-F", str(a.frequency), "--call-graph", "dwarf,32768", "-o", data, "--",
           a.diffnas, "bench", "--genome", a.genome, "--batch-size", str(a.batch_size), "--device", "flex",
           "--warmup", "1", "--json", os.path.join(out, f"diffnas-{mode}.bench.json")] + steps
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    print("+", " ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"diffnas under perf failed ({p.returncode}): {p.stderr[-2000:]}")
    script = os.path.join(out, f"diffnas-{mode}.perf.txt")
    with open(script, "w") as f:
        p = subprocess.run([perf, "script", "-i", data, "--no-inline" if a.no_inline else "--inline"],
                           stdout=f, stderr=subprocess.DEVNULL, cwd=ROOT)
    with open(os.path.join(out, f"diffnas-{mode}.bench.json")) as f:
        bench = json.load(f)
    samples = list(perf_stacks(script))
    if not a.keep_perf:
        os.remove(data)
        os.remove(script)
    # The main thread is the one whose samples reach the bench harness.
    tids = collections.Counter(t[1] for t, st in samples if any("cli::bench" in fr or "main" == fr for fr in st))
    main_tids = {tids.most_common(1)[0][0]} if tids else set()
    # Only the timed part: the harness's own setup (model init, warm-up) is excluded by keeping
    # samples under the timed loop. Warm-up steps run the same code and are a small fraction.
    cats = collections.Counter()
    ops = collections.Counter()
    allocs = collections.Counter()
    for (comm, tid), st in samples:
        joined = "\n".join(st)
        if mode == "train" and "train_step" not in joined and "execute_steps" not in joined and tid in main_tids:
            if "rayon" not in joined:
                continue
        if mode == "sample" and "SamplingRun" not in joined and "Unet" not in joined and tid in main_tids:
            if "rayon" not in joined:
                continue
        cat, phase, alloc, op = classify_diffnas(st, main_tids, tid, mode)
        cats[cat] += 1
        ops[(phase, op, cat)] += 1
        if alloc:
            allocs[cat] += 1
    part = bench["train" if mode == "train" else "sample"]
    per_step = part["seconds"] / (part["steps"] if mode == "train" else part["evals"])
    return dict(samples=sum(cats.values()), categories=dict(cats), alloc=dict(allocs),
                ops=[dict(phase=p, op=o, category=c, samples=n) for (p, o, c), n in ops.most_common()],
                seconds_per_step=per_step, bench=bench, threads=a.threads)


# ---------------------------------------------------------------- PyTorch: torch.profiler

TORCH_RULES = [
    (r"convolution_backward|mkldnn_convolution_backward|_slow_conv2d_backward|thnn_conv2d_backward", "conv backward (data + weight + bias)"),
    (r"mkldnn_convolution|_convolution|aten::convolution$|aten::conv2d|_slow_conv2d_forward|thnn_conv2d|_nnpack", "conv forward"),
    (r"group_norm", "GroupNorm"),
    (r"silu", "SiLU"),
    (r"scaled_dot_product|flash_attention|_softmax|softmax|bmm|baddbmm", "attention (matmuls, softmax)"),
    (r"addmm|aten::mm$|aten::linear|aten::matmul|aten::t$", "linear (time embedding)"),
    (r"aten::(empty|empty_strided|zeros|zeros_like|empty_like|resize_)$", "allocation (malloc, page faults, zeroing)"),
    (r"aten::(cat|copy_|clone|contiguous|slice|select|view|reshape|_reshape_alias|as_strided|expand|"
     r"transpose|permute|unsqueeze|squeeze|chunk|split|narrow|_to_copy|to|upsample_nearest2d|"
     r"upsample_nearest2d_backward|detach|alias|unbind|index|fill_|_unsafe_view|unsafe_split)$",
     "copies and layout (cat, slice, expand, contiguous)"),
    (r"mse_loss|randn|randint|normal_|random_|uniform_", "loss and inputs"),
    (r"^autograd::|evaluate_function|AccumulateGrad|Backward0$|Backward1$", "autodiff / dispatch bookkeeping"),
]


def classify_torch(name, phase, mode):
    if mode == "train":
        if phase == "ema":
            return "EMA"
        if phase == "clip":
            return "global-norm clip"
        if phase == "optimizer":
            return "AdamW"
        if phase == "inputs":
            return "loss and inputs"
    elif phase == "sampler":
        return "sampler update"
    for rx, cat in TORCH_RULES:
        if re.search(rx, name):
            return cat
    if name.startswith("aten::"):
        return "other element-wise"
    return "autodiff / dispatch bookkeeping"


def run_torch(a, mode, out):
    gfile = os.path.join(out, "genome.json")
    prof = os.path.join(out, f"torch-{mode}.ops.json")
    steps = ["--train-steps", str(a.steps), "--sample-evals", "0"] if mode == "train" else \
        ["--train-steps", "0", "--sample-evals", str(a.steps)]
    cmd = [a.python, os.path.join(HERE, "torch_reference.py"), "--genome", gfile, "--batch-size", str(a.batch_size),
           "--device", "cpu", "--mode", "eager", "--precision", "f32", "--warmup", "2", "--threads", str(a.threads),
           "--profile-ops", prof, "--json", os.path.join(out, f"torch-{mode}.bench.json")] + steps
    print("+", " ".join(cmd), file=sys.stderr)
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.exit(f"torch_reference.py failed ({p.returncode}): {p.stderr[-2000:]}")
    with open(prof) as f:
        events = json.load(f)
    with open(os.path.join(out, f"torch-{mode}.bench.json")) as f:
        bench = json.load(f)
    cats = collections.Counter()
    ops = collections.Counter()
    for e in events["ops"]:
        cat = classify_torch(e["name"], e["phase"], mode)
        cats[cat] += e["self_us"]
        ops[(e["phase"], e["name"], cat)] += e["self_us"]
    total = sum(cats.values())
    # Time per step from the profiled steps themselves (the profiler's overhead included), and
    # the unprofiled rate from the bench JSON.
    part = bench["train" if mode == "train" else "sample"]
    per_step = part["seconds"] / (part["steps"] if mode == "train" else part["evals"])
    return dict(total_us=total, categories=dict(cats), profiled_steps=events["steps"],
                ops=[dict(phase=p, op=o, category=c, self_us=v) for (p, o, c), v in ops.most_common()],
                seconds_per_step=per_step, bench=bench, threads=a.threads)


# ---------------------------------------------------------------- the table


def category_ms(d, c):
    """Milliseconds per step of category `c` in a diffnas profile (its share of the perf samples)."""
    return d["seconds_per_step"] * 1e3 * d["categories"].get(c, 0) / max(d["samples"], 1)


def render(genome, batch, mode, d, t, before=None):
    lines = []
    what = "training step" if mode == "train" else "denoiser evaluation (sampling step)"
    lines.append(f"### {genome}, batch {batch}, one {what}, {d['threads']} thread(s)\n")
    was = f"before: {before['seconds_per_step'] * 1e3:.1f} ms per step; " if before else ""
    lines.append(f"diffnas flex: {was}{d['seconds_per_step'] * 1e3:.1f} ms per step ({d['samples']} perf samples); "
                 f"PyTorch eager: {t['seconds_per_step'] * 1e3:.1f} ms per step (unprofiled).\n")
    head = "| category |" + (" before ms |" if before else "")
    lines.append(head + " diffnas ms | diffnas share | of which allocation | PyTorch ms | PyTorch share | gap (ms) |")
    lines.append("|---|" + ("---|" if before else "") + "---|---|---|---|---|---|")
    dtot = max(d["samples"], 1)
    ttot = max(t["total_us"], 1e-9)
    for c in CATEGORIES:
        dn = d["categories"].get(c, 0)
        tn = t["categories"].get(c, 0.0)
        bn = before["categories"].get(c, 0) if before else 0
        if dn == 0 and tn == 0 and bn == 0:
            continue
        dms = category_ms(d, c)
        tms = t["seconds_per_step"] * 1e3 * tn / ttot
        al = d["alloc"].get(c, 0) / dtot
        was = f" {category_ms(before, c):.2f} |" if before else ""
        lines.append(f"| {c} |{was} {dms:.2f} | {100 * dn / dtot:.1f}% | {100 * al:.1f}% | {tms:.2f} | "
                     f"{100 * tn / ttot:.1f}% | {dms - tms:+.2f} |")
    lines.append("")
    lines.append("Top diffnas ops (phase, Burn op or autodiff node, category, share):\n")
    for o in d["ops"][:15]:
        lines.append(f"- {o['phase']} · `{o['op']}` · {o['category']}: {100 * o['samples'] / dtot:.1f}%")
    lines.append("")
    lines.append("Top PyTorch ops (phase, aten op, category, share of self CPU time):\n")
    for o in t["ops"][:15]:
        lines.append(f"- {o['phase']} · `{o['op']}` · {o['category']}: {100 * o['self_us'] / ttot:.1f}%")
    lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genome", default="tiny", help="a preset or a genome JSON file")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="flex (rayon) and PyTorch threads")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps / denoiser evaluations")
    ap.add_argument("--what", default="train,sample", help="train, sample or both")
    ap.add_argument("--frequency", type=int, default=999, help="perf samples per second")
    ap.add_argument("--keep-perf", action="store_true", help="keep perf.data and the perf script text")
    ap.add_argument("--no-inline", action="store_true", help="skip inlined frames (faster perf script)")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.expanduser("~"), ".cache/diffnas/target"))
    ap.add_argument("--diffnas", default=os.path.join(target, "release/diffnas"))
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--before", help="an earlier run's profile.json (same genome, batch and threads): "
                    "its diffnas milliseconds become a `before` column")
    ap.add_argument("--out")
    a = ap.parse_args()
    before = None
    if a.before:
        with open(a.before) as f:
            before = json.load(f)
    name = os.path.splitext(os.path.basename(a.genome))[0]
    out = a.out or os.path.join(ROOT, "bench-results", f"ops-{name}-b{a.batch_size}-t{a.threads}")
    os.makedirs(out, exist_ok=True)
    if not os.access(a.diffnas, os.X_OK):
        sys.exit(f"--diffnas {a.diffnas}: not an executable; build it with `cargo build --release`")
    c = subprocess.run([a.diffnas, "genome", "cost", a.genome, "--json"], capture_output=True, text=True, cwd=ROOT)
    if c.returncode != 0:
        sys.exit(f"diffnas genome cost {a.genome}: {c.stderr.strip()}")
    cost = json.loads(c.stdout)
    with open(os.path.join(out, "genome.json"), "w") as f:
        json.dump(cost["genome"], f, indent=2)
    a.genome = os.path.join(out, "genome.json")
    result = dict(genome=name, batch_size=a.batch_size, threads=a.threads, params=cost["params"], macs=cost["macs"])
    md = []
    for mode in a.what.split(","):
        if mode not in ("train", "sample"):
            sys.exit(f"--what: {mode!r} is neither train nor sample")
        d = run_diffnas(a, mode, out)
        t = None if a.skip_torch else run_torch(a, mode, out)
        result[mode] = dict(diffnas=d, torch=t)
        if t:
            was = before.get(mode, {}).get("diffnas") if before else None
            md.append(render(name, a.batch_size, mode, d, t, was))
    with open(os.path.join(out, "profile.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "profile.md"), "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
