"""``python -m benchmarks [part ...]``: run the parts (all by default) and print each
figure beside its reference from the same run, the ratio, and the goal: MET or MISSED.

Parts: sampler, fanout, compression, slow, peers, widget, idle, latency, fleet,
prometheus, flood, history. ``--quick`` runs tiny sizes (a check that the harness works,
not a measurement). ``--json PATH`` also writes the results as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from types import ModuleType

import psutil

from . import (
    compression,
    fanout,
    fleet,
    flood,
    history,
    idle,
    latency,
    peers,
    prometheus,
    sampler,
    slow,
    widget,
)
from .common import Bench, Result, Settings, raise_nofile, workspace

PARTS: dict[str, ModuleType] = {
    "sampler": sampler,
    "fanout": fanout,
    "compression": compression,
    "slow": slow,
    "peers": peers,
    "widget": widget,
    "idle": idle,
    "latency": latency,
    "fleet": fleet,
    "prometheus": prometheus,
    "flood": flood,
    "history": history,
}


def machine() -> str:
    cores = psutil.cpu_count()
    memory = psutil.virtual_memory().total / 2**30
    return f"{platform.node()}: {cores} cores, {memory:.0f} GiB, {platform.platform()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("parts", nargs="*", choices=[*PARTS, []], metavar="part")
    parser.add_argument("--list", action="store_true", help="list the parts and exit")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the harness")
    parser.add_argument("--frames", type=int, help="frames per measurement window")
    parser.add_argument("--sizes", help="fan-out client counts, e.g. 100,1000,2000")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.list:
        for name, module in PARTS.items():
            print(f"{name:<12} {module.TITLE}")
        return 0
    settings = Settings.quick() if args.quick else Settings()
    if args.frames:
        settings.frames = args.frames
    if args.sizes:
        settings.sizes = tuple(int(x) for x in args.sizes.split(","))
        if settings.goal_size not in settings.sizes:
            settings.goal_size = settings.sizes[-1]
    raise_nofile()
    chosen = args.parts or list(PARTS)
    started = time.monotonic()
    print(f"sysmon-nb benchmarks, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f}")
    results: list[Result] = []
    with workspace() as workdir:
        bench = Bench(settings, workdir)
        for name in chosen:
            module = PARTS[name]
            print(f"\n[{name}] {module.TITLE}", flush=True)
            part_results = module.run(bench)
            for result in part_results:
                print(result.line(), flush=True)
            results.extend(part_results)
    missed = [r for r in results if r.met is False]
    print(
        f"\n{len(results)} figures, {sum(r.met is True for r in results)} goals met, "
        f"{len(missed)} missed, in {time.monotonic() - started:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": machine(), "results": [r.to_json() for r in results]}, f, indent=1
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
