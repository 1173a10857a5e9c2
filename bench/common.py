"""Shared helpers for the bench scripts: medians, fresh-process timing and peak memory."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

# Runs a command as a child and reports its wall time and peak RSS (ru_maxrss of the only
# child this wrapper ever has, so earlier measurements cannot leak in).
_MEASURE = (
    "import json, resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "wall = time.perf_counter() - t\n"
    "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
    "print(json.dumps({'wall_s': wall, 'peak_rss_mb': rss, 'rc': p.returncode,\n"
    "                  'stderr': p.stderr.decode()[-500:]}))\n"
)


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time (s) and peak RSS (MB) of `cmd` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True,
                         text=True, env=env or os.environ.copy(), check=True)
    result = json.loads(out.stdout)
    if result["rc"] != 0:
        raise RuntimeError(f"{cmd} failed: {result['stderr']}")
    return result


def median_ms(fn, repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
