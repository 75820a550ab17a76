#!/usr/bin/env python3
"""diffnas against PyTorch on the same machine: runs `diffnas bench` and the PyTorch reference
(torch_reference.py) for each genome and batch size, and writes a table with the ratios
diffnas / PyTorch and the achieved fraction of the device's f32 peak (from the cost model's MACs).

    python3 examples/bench/side_by_side.py --preset cpu      # a CPU-only machine
    python3 examples/bench/side_by_side.py --preset gpu      # an NVIDIA GPU (torch CUDA)

Every measurement is one fresh process with a time limit; a failure (out of memory, a compile
error, a timeout) becomes a row that says so instead of stopping the table. Results go to
--out (default bench-results/<preset>): one JSON file per measurement, results.json, table.md.
Build first: `cargo build --release` (and `--features cuda` / `--features vulkan` for those
rows; --diffnas-cuda / --diffnas-vulkan name such binaries).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# f32 (non-tensor-core) peak TFLOP/s of GPUs, by a substring of the adapter name; the table is
# rated against the plain f32 rate since that is what diffnas's WGSL kernels can reach.
F32_PEAK_TFLOPS = [
    ("H200", 66.9),
    ("H100 PCIe", 51.2),
    ("H100", 66.9),
    ("A100", 19.5),
    ("L40S", 91.6),
    ("L4", 30.3),
    ("RTX 4090", 82.6),
    ("RTX 3090", 35.6),
    ("A10", 31.2),
    ("T4", 8.1),
]

PRESETS = {
    # name: genomes, batch sizes, diffnas devices, torch device, torch configs, steps, evals
    "cpu": dict(
        genomes=["tiny", "examples/bench/genomes/fmnist-evolution-best.json", "ddpm-cifar10"],
        batch_sizes={"tiny": [8, 32], "ddpm-cifar10": [2], "*": [8, 32]},
        diffnas=["flex", "wgpu"],
        torch_device="cpu",
        torch=[("eager", "f32"), ("compile", "f32")],
        train_steps=10,
        sample_evals=10,
        small_steps={"ddpm-cifar10": (2, 2)},
        # A software rasteriser (lavapipe) runs the WGSL path at a few image-steps per second:
        # the smallest cases only, with fewer steps.
        limits={"wgpu": dict(batches=[8], steps=(3, 5), genomes=["tiny", "fmnist-evolution-best"])},
        convs=["auto"],
    ),
    "gpu": dict(
        genomes=["tiny", "examples/bench/genomes/fmnist-evolution-best.json", "ddpm-cifar10"],
        batch_sizes={"ddpm-cifar10": [128], "*": [128]},
        diffnas=["wgpu", "vulkan", "cuda"],
        torch_device="cuda",
        torch=[("eager", "f32"), ("compile", "f32"), ("eager", "tf32"), ("compile", "tf32"), ("compile", "bf16")],
        train_steps=20,
        sample_evals=20,
        small_steps={},
        limits={},
        # Burn's convolution against ours, so one run shows the before and the after.
        convs=["direct", "im2col"],
    ),
}


def sh(cmd, timeout, log, env=None):
    t0 = time.time()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT,
                               env=None if env is None else dict(os.environ, **env))
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return rc, time.time() - t0


def tail(path, n=3):
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if l.strip()]
        return " / ".join(lines[-n:])[-300:]
    except OSError:
        return ""


def cost_of(diffnas, genome):
    out = subprocess.run([diffnas, "genome", "cost", genome, "--json"], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"diffnas genome cost {genome}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def short(genome):
    return os.path.splitext(os.path.basename(genome))[0]


def peak_tflops(device_name, override):
    if override:
        return override
    for key, tf in F32_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return tf
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--genomes", help="comma-separated presets or genome JSON files (overrides the preset's)")
    ap.add_argument("--batch-sizes", help="comma-separated batch sizes for every genome (overrides)")
    ap.add_argument("--diffnas-devices", help="comma-separated: flex, wgpu, vulkan, cuda (overrides)")
    ap.add_argument("--convs", help="comma-separated `diffnas bench --conv` algorithms for the GPU devices "
                    "(auto, direct, gemm, im2col), one row each; flex always runs auto")
    ap.add_argument("--torch-configs", help="comma-separated mode:precision, e.g. eager:f32,compile:tf32")
    ap.add_argument("--train-steps", type=int)
    ap.add_argument("--sample-evals", type=int)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (0: its default)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of every measurement, interleaved; each row is the median (default 3)")
    ap.add_argument("--peak-tflops", type=float, help="f32 peak of the device (default: known GPUs)")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.expanduser("~"), ".cache/diffnas/target"))
    ap.add_argument("--diffnas", default=os.path.join(target, "release/diffnas"))
    ap.add_argument("--diffnas-vulkan", default=os.path.join(target, "vulkan/release/diffnas"))
    ap.add_argument("--diffnas-cuda", default=os.path.join(target, "cuda/release/diffnas"))
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL|BINARY|ARGS",
        help="an extra diffnas row per genome and batch (repeatable): a label, a binary (empty: "
        "--diffnas) and extra `diffnas bench` arguments, e.g. 'burn ops||--conv direct --norm burn' "
        "or 'v0.1|/tmp/old/diffnas|'; it runs on the first of --diffnas-devices",
    )
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--out")
    ap.add_argument("--deadline", type=float,
                    help="seconds from the start after which no measurement starts; the rest become "
                    "rows that say so (for a machine lent for a fixed time)")
    ap.add_argument("--autotune-logs", action="store_true",
                    help="give every diffnas measurement its own DIFFNAS_AUTOTUNE_LOG (NAME.autotune.log "
                    "beside its report): which kernel candidate autotune chose for each operation and shape")
    ap.add_argument("--torch-device", help="PyTorch's device (overrides the preset's: cpu, cuda, mps)")
    ap.add_argument("--torch-first", action="store_true",
                    help="run the PyTorch measurements of each genome and batch before diffnas's")
    a = ap.parse_args()
    started = time.time()

    p = PRESETS[a.preset]
    genomes = a.genomes.split(",") if a.genomes else p["genomes"]
    devices = a.diffnas_devices.split(",") if a.diffnas_devices else p["diffnas"]
    tconfigs = [tuple(c.split(":")) for c in a.torch_configs.split(",")] if a.torch_configs else p["torch"]
    convs = a.convs.split(",") if a.convs else p["convs"]
    for c in convs:
        if c not in ("auto", "direct", "gemm", "im2col"):
            sys.exit(f"--convs: unknown convolution algorithm {c!r} (auto, direct, gemm, im2col)")
    out = a.out or os.path.join(ROOT, "bench-results", a.preset)
    os.makedirs(out, exist_ok=True)
    if not os.access(a.diffnas, os.X_OK):
        sys.exit(f"--diffnas {a.diffnas}: not an executable; build it with `cargo build --release`")
    binaries = {"flex": a.diffnas, "wgpu": a.diffnas, "vulkan": a.diffnas_vulkan, "cuda": a.diffnas_cuda}
    for d in devices:
        if d not in binaries:
            sys.exit(f"--diffnas-devices: unknown device {d!r} (flex, wgpu, vulkan, cuda)")

    variants = []
    for v in a.variant:
        parts = v.split("|")
        if len(parts) != 3 or not parts[0]:
            sys.exit(f"--variant {v!r}: expected LABEL|BINARY|ARGS (BINARY and ARGS may be empty)")
        label, binary, extra = parts
        binary = binary or a.diffnas
        if not os.access(binary, os.X_OK):
            sys.exit(f"--variant {label}: {binary} is not an executable")
        variants.append((label, binary, extra.split()))

    rows = []
    for genome in genomes:
        cost = cost_of(a.diffnas, genome)
        gfile = os.path.join(out, f"{short(genome)}.genome.json")
        with open(gfile, "w") as f:
            json.dump(cost["genome"], f, indent=2)
        if a.batch_sizes:
            batches = [int(b) for b in a.batch_sizes.split(",")]
        else:
            batches = p["batch_sizes"].get(short(genome), p["batch_sizes"]["*"])
        steps, evals = p["small_steps"].get(short(genome), (p["train_steps"], p["sample_evals"]))
        steps = a.train_steps if a.train_steps is not None else steps
        evals = a.sample_evals if a.sample_evals is not None else evals
        for b in batches:
            runs = []
            for d in devices:
                binary = binaries[d]
                lim = p["limits"].get(d, {})
                if b not in lim.get("batches", [b]) or short(genome) not in lim.get("genomes", [short(genome)]):
                    continue
                d_steps, d_evals = lim.get("steps", (steps, evals))
                for conv in (["auto"] if d == "flex" else convs):
                    suffix = "" if conv == "auto" else f"-{conv}"
                    name = f"{short(genome)}-b{b}-diffnas-{d}{suffix}"
                    impl = f"diffnas {d}" + ("" if conv == "auto" else f" conv={conv}")
                    if not os.access(binary, os.X_OK):
                        runs.append(dict(name=name, impl=impl, error=f"no binary at {binary}"))
                        continue
                    dev = {"vulkan": "wgpu"}.get(d, d)
                    cmd = [binary, "bench", "--genome", gfile, "--batch-size", str(b), "--device", dev,
                           "--train-steps", str(d_steps), "--sample-evals", str(d_evals), "--warmup", str(a.warmup),
                           "--conv", conv, "--json", os.path.join(out, name + ".json")]
                    if d != "flex":
                        cmd.append("--peak")
                    runs.append(dict(name=name, impl=impl, cmd=cmd))
            for label, binary, extra in variants:
                d = devices[0]
                lim = p["limits"].get(d, {})
                if b not in lim.get("batches", [b]) or short(genome) not in lim.get("genomes", [short(genome)]):
                    continue
                d_steps, d_evals = lim.get("steps", (steps, evals))
                slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
                name = f"{short(genome)}-b{b}-diffnas-{d}-{slug}"
                cmd = [binary, "bench", "--genome", gfile, "--batch-size", str(b), "--device", {"vulkan": "wgpu"}.get(d, d),
                       "--train-steps", str(d_steps), "--sample-evals", str(d_evals), "--warmup", str(a.warmup),
                       "--json", os.path.join(out, name + ".json")] + extra
                runs.append(dict(name=name, impl=f"diffnas {d} ({label})", cmd=cmd))
            for mode, prec in tconfigs:
                name = f"{short(genome)}-b{b}-torch-{mode}-{prec}"
                cmd = [a.python, os.path.join(HERE, "torch_reference.py"), "--genome", gfile, "--batch-size", str(b),
                       "--device", a.torch_device or p["torch_device"], "--mode", mode, "--precision", prec,
                       "--train-steps", str(steps), "--sample-evals", str(evals), "--warmup", str(a.warmup),
                       "--threads", str(a.threads), "--expect-params", str(cost["params"]),
                       "--macs", str(cost["macs"]), "--genome-hash", cost["hash"],
                       "--json", os.path.join(out, name + ".json"),
                       # the same square matmul as `diffnas bench --peak` (diffnas::bench::matmul_probe_size)
                       "--matmul-probe", "512" if (a.torch_device or p["torch_device"]) == "cpu" else "4096"]
                runs.append(dict(name=name, impl=f"torch {mode} {prec}", cmd=cmd))
            if a.torch_first:
                runs.sort(key=lambda r: not r["impl"].startswith("torch "))
            # Every measurement of this genome and batch once per round, round after round, so
            # that a slow spell of the machine hits all of them alike; a row is the median round.
            reports = {i: [] for i in range(len(runs))}
            errors = {}
            for rnd in range(a.repeats):
                for i, r in enumerate(runs):
                    if "cmd" not in r or i in errors:
                        continue
                    if a.deadline is not None and time.time() - started > a.deadline:
                        if not reports[i]:
                            errors[i] = f"not run: past the --deadline of {a.deadline:.0f} s"
                        continue
                    jf = os.path.join(out, r["name"] + ".json")
                    if os.path.exists(jf):
                        os.remove(jf)
                    print(f"[{time.strftime('%H:%M:%S')}] {r['name']} (round {rnd + 1}/{a.repeats})", file=sys.stderr, flush=True)
                    log = os.path.join(out, r["name"] + ".log")
                    env = None
                    if a.autotune_logs and not r["impl"].startswith("torch "):
                        env = {"DIFFNAS_AUTOTUNE_LOG": os.path.join(out, r["name"] + ".autotune.log")}
                    rc, wall = sh(r["cmd"], a.timeout, log, env)
                    if rc == 0 and os.path.exists(jf):
                        with open(jf) as f:
                            reports[i].append(json.load(f))
                    else:
                        errors[i] = f"exit {rc}: {tail(log)}"
            for i, r in enumerate(runs):
                row = dict(genome=short(genome), params=cost["params"], macs=cost["macs"], batch=b, impl=r["impl"])
                if "cmd" not in r:
                    row["error"] = r["error"]
                elif i in errors:
                    row["error"] = errors[i]
                else:
                    row["report"] = median_report(reports[i])
                    row["rounds"] = reports[i]
                rows.append(row)

    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(rows, f, indent=2)
    table = render(rows, a.peak_tflops)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table)
    print(table)


def median_report(reports):
    """The first report with each part's rates replaced by their median over the rounds."""
    rep = json.loads(json.dumps(reports[0]))
    for part in ("train", "sample"):
        if not rep.get(part):
            continue
        for key in ("images_per_s", "image_steps_per_s", "steps_per_s", "achieved_gflops", "seconds"):
            vals = [r[part][key] for r in reports if r.get(part) and r[part].get(key) is not None]
            if vals:
                rep[part][key] = statistics.median(vals)
    return rep


def metric(row, part, key):
    r = row.get("report") or {}
    return (r.get(part) or {}).get(key)


def render(rows, peak_override):
    lines = []
    # One f32 peak for the machine: --peak-tflops, else a known GPU's datasheet rate, else what
    # `diffnas bench --peak` measured with its FMA probe on a GPU backend of this machine.
    measured = [
        r["report"]["peak"]["f32_gflops"]
        for r in rows
        if r.get("report") and (r["report"].get("peak") or {}).get("f32_gflops")
    ]
    names = [r["report"]["device"]["name"] for r in rows if r.get("report")]
    peak_source = "none"
    if peak_override:
        peak_source = f"{peak_override} TFLOP/s (--peak-tflops)"
    else:
        for n in names:
            tf = peak_tflops(n, None)
            if tf:
                peak_override, peak_source = tf, f"{tf} TFLOP/s ({n} datasheet, non-tensor-core f32)"
                break
        else:
            if measured:
                peak_override = max(measured) / 1e3
                peak_source = f"{max(measured):.1f} GFLOP/s (measured by `diffnas bench --peak`, FMA probe)"
    lines.append(f"Devices: {', '.join(sorted(set(names)))}. f32 peak: {peak_source}.\n")
    lines.append(
        "| genome | batch | implementation | device | train img/s | train GFLOP/s | vs torch eager | vs torch compile "
        "| train % f32 peak | sample img-steps/s | sample GFLOP/s | vs torch eager | vs torch compile "
        "| sample % f32 peak | peak mem |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def fmt(v, spec="{:.1f}"):
        return "—" if v is None else spec.format(v)

    groups = {}
    for r in rows:
        groups.setdefault((r["genome"], r["batch"]), []).append(r)
    for (genome, batch), rs in groups.items():
        base = {}
        for r in rs:
            m = re.match(r"torch (eager|compile) f32", r["impl"])
            if m and r.get("report"):
                base[m.group(1)] = r
        for r in rs:
            if "error" in r:
                lines.append(f"| {genome} | {batch} | {r['impl']} | — | failed: {r['error']} |" + " |" * 10)
                continue
            rep = r["report"]
            dev = rep["device"]
            peak = peak_tflops(dev["name"], peak_override)
            cells = [genome, str(batch), r["impl"], dev["name"]]
            for part, key in [("train", "images_per_s"), ("sample", "image_steps_per_s")]:
                v = metric(r, part, key)
                gf = metric(r, part, "achieved_gflops")
                cells.append(fmt(v))
                cells.append(fmt(gf))
                for b in ["eager", "compile"]:
                    ref = metric(base[b], part, key) if b in base else None
                    cells.append(fmt(v / ref if v and ref else None, "{:.2f}x"))
                cells.append(fmt(100 * gf / (peak * 1e3) if gf and peak else None, "{:.1f}%"))
            mem = rep.get("peak_bytes_allocated_train") or rep.get("device_bytes_reserved")
            cells.append(fmt(mem / 2**20 if mem else None, "{:.0f} MiB"))
            lines.append("| " + " | ".join(cells) + " |")
    # The ceilings each measurement's probes found (`diffnas bench --peak`, torch_reference.py
    # --matmul-probe): Burn's matmul against cuBLAS on the same square product.
    probes = [r for r in rows if (r.get("report") or {}).get("peak", {}) and r["report"]["peak"].get("matmul_gflops")]
    if probes:
        lines.append("\n| implementation | precision | matmul n | matmul GFLOP/s | f32 FMA GFLOP/s | copy GB/s | launch µs |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in probes:
            pk = r["report"]["peak"]
            prec = r["report"].get("precision", "f32")
            fma = pk.get("f32_gflops")
            lines.append(
                f"| {r['impl']} | {prec} | {pk.get('matmul_n')} | {fmt(pk['matmul_gflops'])} "
                f"| {fmt(fma)} | {fmt(pk.get('copy_gbps'))} "
                f"| {fmt(pk.get('launch_us'), '{:.1f}')} |"
            )
    lines.append(
        "\nEach rate is the median of the rounds (`--repeats`), the measurements of a genome and batch "
        "taking turns within a round. "
        "Ratios are diffnas (or PyTorch config) / PyTorch f32 of the same mode, same genome and batch; "
        "above 1.00x is faster than PyTorch. FLOPs = 2 x MACs (x3 for a training step), MACs from the "
        "cost model (equal to the reference's own count, checked)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
