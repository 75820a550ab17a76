#!/usr/bin/env python3
"""Which GPU kernels a `diffnas bench` run spends its device time in.

    python3 examples/bench/kernel_profile.py --genome tiny --batch-size 8 --device wgpu \
        --train-steps 3 --sample-evals 3 --out bench-results/kernels-tiny

Runs `diffnas bench` with CubeCL's kernel profiler on (CUBECL_DEBUG_OPTION=profile: every kernel
is timed on the device, which serialises the queue, so absolute times are inflated; the shares
are what to read), then aggregates the per-kernel log into a table: the top kernels by total
device time and a breakdown by kind (convolution/matmul, normalisation and other reductions,
fused element-wise chains, attention, data movement, random numbers). An unprofiled run first
fills CubeCL's on-disk autotune cache, so autotune candidates stay out of the profile; pass
--skip-first to also drop each kernel's first runs.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

LINE = re.compile(r"^\|\s*([0-9.]+)(ns|µs|us|ms|s)\s*\|\s*(.+?)\s*$")
UNIT = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}

KINDS = [
    ("attention", re.compile(r"attention|flash|softmax", re.I)),
    ("convolution / matmul", re.compile(r"conv|matmul|gemm|im2col|col2im|cmma|mma|tile|stage", re.I)),
    ("fused element-wise", re.compile(r"fuse|elemwise|elementwise|ElemWise|Trace", re.I)),
    ("reduction / norm", re.compile(r"reduce|sum|mean|norm|argmax|argmin|prod|max|min", re.I)),
    ("random", re.compile(r"random|uniform|normal|bernoulli|prng", re.I)),
    ("data movement", re.compile(r"copy|cat|slice|gather|scatter|into_contiguous|layout|permute|repeat|cast|fill|index", re.I)),
]


def kind_of(name):
    for kind, rx in KINDS:
        if rx.search(name):
            return kind
    return "other"


def short_name(name):
    # Generic parameters and launch details make every shape its own kernel; group by family.
    n = re.sub(r"_[0-9a-f]{8}\b", "", name)  # content hashes of generated kernels
    n = re.sub(r"<.*", "", n)
    n = re.sub(r"\s*\{.*", "", n)
    n = re.sub(r"\(.*", "", n)
    return n.strip()[:90] or name[:90]


def parse(log):
    seen = collections.Counter()
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line.strip())
            # Per-launch lines are `| duration | name`; the summary tables end their rows in `|`.
            if not m or line.rstrip().endswith("|"):
                continue
            secs = float(m.group(1)) * UNIT[m.group(2)]
            name = m.group(3)
            seen[name] += 1
            yield name, secs, seen[name]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genome", default="tiny")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="wgpu")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--sample-evals", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--skip-first", type=int, default=0, help="drop each kernel's first N runs (compile, autotune)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-prime", action="store_true", help="skip the unprofiled run that fills the autotune cache")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.expanduser("~"), ".cache/diffnas/target"))
    ap.add_argument("--diffnas", default=os.path.join(target, "release/diffnas"))
    ap.add_argument("--log", help="aggregate an existing profiler log instead of running")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "kernels"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)

    log = a.log
    if not log:
        log = os.path.join(a.out, "cubecl.log")
        if os.path.exists(log):
            os.remove(log)
        env = dict(os.environ, CUBECL_DEBUG_LOG=log, CUBECL_DEBUG_OPTION="profile")
        cmd = [a.diffnas, "bench", "--genome", a.genome, "--batch-size", str(a.batch_size), "--device", a.device,
               "--train-steps", str(a.train_steps), "--sample-evals", str(a.sample_evals), "--warmup", str(a.warmup),
               "--json", os.path.join(a.out, "bench.json")]
        if not a.no_prime:
            # Autotune results and device probes are cached on disk: one run without the profiler
            # first keeps the autotune candidates out of the profile.
            print("$ " + " ".join(cmd) + "   (priming the autotune cache)", file=sys.stderr)
            subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("$ " + " ".join(cmd), file=sys.stderr)
        rc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
        if rc != 0:
            sys.exit(f"diffnas bench exited {rc}")
    if not os.path.exists(log):
        sys.exit(f"{log}: no profiler log (is --device a CubeCL backend? flex has no kernels to profile)")

    fam = collections.defaultdict(lambda: [0.0, 0])
    kinds = collections.defaultdict(float)
    total = 0.0
    for name, secs, nth in parse(log):
        if nth <= a.skip_first:
            continue
        f = fam[short_name(name)]
        f[0] += secs
        f[1] += 1
        kinds[kind_of(name)] += secs
        total += secs
    if total == 0:
        sys.exit(f"{log}: no kernel timings found")
    lines = [f"Device time of every kernel, {a.genome} batch {a.batch_size} on {a.device}: {total:.3f} s\n"]
    lines.append("| kind | seconds | share |")
    lines.append("|---|---|---|")
    for k, s in sorted(kinds.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {s:.3f} | {100 * s / total:.1f}% |")
    lines.append("")
    lines.append("| kernel family | launches | seconds | share |")
    lines.append("|---|---|---|---|")
    for n, (s, c) in sorted(fam.items(), key=lambda kv: -kv[1][0])[: a.top]:
        lines.append(f"| `{n}` | {c} | {s:.4f} | {100 * s / total:.1f}% |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "kernels.md"), "w") as f:
        f.write(table)
    with open(os.path.join(a.out, "kernels.json"), "w") as f:
        json.dump(
            dict(total_seconds=total, kinds=kinds, families={n: dict(seconds=s, launches=c) for n, (s, c) in fam.items()}),
            f,
            indent=2,
        )
    print(table)


if __name__ == "__main__":
    main()
