"""Start-up time of the ``zoo`` command: this tree against a baseline revision, side by side.

Each round runs, for both trees and in rotating order, ``python -m zoo_core <command>`` in a fresh
process and reads its wall time and the CPU time of the child (``resource.getrusage``). The
baseline tree is a ``git worktree`` of ``--baseline`` (default: the revision before the Zoo
object and lazy plugin registrations, 4dd3382), put first on ``PYTHONPATH`` (its ``zoo_core`` and
``plugins/``), so both arms use the same interpreter and installed packages.

    python benchmarks/startup.py --rounds 5
    python -X importtime -m zoo_core list 2> importtime.txt   # what is imported, and its cost
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["list"], ["plugins"])


def timed(tree: Path, command: list[str]) -> tuple[float, float]:
    """(wall s, child CPU s) of one ``python -m zoo_core COMMAND`` run with ``tree`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(tree) + os.pathsep + str(tree / "plugins"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "zoo_core", *command], cwd=tempfile.gettempdir(), env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: zoo {' '.join(command)} failed: {proc.stderr[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="4dd3382", help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(base), args.baseline], cwd=REPO, check=True)
        try:
            arms = {"this tree": REPO, f"baseline {args.baseline}": base}
            print(f"{'command':<10} {'arm':<18} {'wall s (median [min-max])':<28} {'CPU s':<8}")
            for command in COMMANDS:
                results: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
                for r in range(args.rounds):
                    order = list(arms) if r % 2 == 0 else list(reversed(arms))
                    for name in order:
                        results[name].append(timed(arms[name], command))
                medians = {}
                for name, values in results.items():
                    walls, cpus = [v[0] for v in values], [v[1] for v in values]
                    medians[name] = (statistics.median(walls), statistics.median(cpus))
                    print(f"{' '.join(command):<10} {name:<18} {medians[name][0]:6.2f} [{min(walls):.2f}-{max(walls):.2f}]"
                          f"{'':<12} {medians[name][1]:6.2f}")
                new, old = medians["this tree"], medians[f"baseline {args.baseline}"]
                print(f"{' '.join(command):<10} speed-up: {old[0] / new[0]:.1f}x wall, {old[1] / new[1]:.1f}x CPU")
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, check=False)


if __name__ == "__main__":
    main()
