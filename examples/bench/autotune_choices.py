#!/usr/bin/env python3
"""What GPU autotune chose: reads the logs `DIFFNAS_AUTOTUNE_LOG=FILE diffnas ...` writes (one
"Fastest result CANDIDATE-KEY ..." line per decision, from CubeCL's autotune logger) and prints,
per log, how often each candidate won for each kind of operation, and the matmul problems
(convolutions run as im2col + matmul) with the candidate chosen, largest first.

    python3 examples/bench/autotune_choices.py run/*.autotune.log > autotune.md
"""
import collections
import os
import re
import sys

DECISION = re.compile(r"^Fastest result (?P<cand>.+?)-(?P<key>[A-Za-z]+AutotuneKey|[A-Za-z]+Key)\b(?P<rest>.*)$")
PROBLEM = re.compile(r"m: (\d+), n: (\d+), k: (\d+).*?elem_lhs: (\w+\(\w+\))")


def parse(path):
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = DECISION.match(line.strip())
            if m:
                out.append((m["cand"], m["key"], m["rest"]))
    return out


def main(paths):
    if not paths:
        sys.exit("usage: autotune_choices.py LOG [LOG ...]")
    for path in paths:
        if not os.path.isfile(path):
            print(f"## {path}: no such log (the measurement did not run)\n")
            continue
        decisions = parse(path)
        print(f"## {os.path.basename(path)}: {len(decisions)} decisions\n")
        if not decisions:
            print("(no autotune decision in this log: every kernel came from the cache, or nothing was tuned)\n")
            continue
        wins = collections.Counter((k, c) for c, k, _ in decisions)
        print("| operation | candidate | times chosen |\n|---|---|---|")
        for (k, c), n in sorted(wins.items(), key=lambda x: (x[0][0], -x[1])):
            print(f"| {k} | `{c}` | {n} |")
        problems = []
        for c, k, rest in decisions:
            p = PROBLEM.search(rest)
            if p and "Matmul" in k:
                m_, n_, k_ = (int(p.group(i)) for i in (1, 2, 3))
                problems.append((m_ * n_ * k_, m_, n_, k_, p.group(4), k, c))
        if problems:
            print("\n| m | n | k | operands | operation | candidate |\n|---|---|---|---|---|---|")
            for _, m_, n_, k_, elem, k, c in sorted(set(problems), reverse=True)[:40]:
                print(f"| {m_} | {n_} | {k_} | {elem} | {k} | `{c}` |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
