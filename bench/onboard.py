"""Benchmark a newcomer's first `make db-up`: fresh clone to ready database, every package cache empty.

    (a) uv on PATH                  `make db-up` syncs .venv from uv.lock with uv
    (b) no uv: bootstrapped by pip  pip installs uv into .bootstrap/ first (the README's fresh machine)
    (c) pip only                    TOOLKIT_INSTALLER=pip: pip installs from constraints.txt (the old way)

Each scenario: `git clone` of this checkout's HEAD into a temp dir, then `make db-up` with the embedded
engine on a free port (what a machine without Docker gets), timed from the clone to the database being
ready; then the server is stopped and the clone deleted. Caches are fresh temp dirs (UV_CACHE_DIR,
PIP_NO_CACHE_DIR), so every byte is downloaded again. Prints each time, the ratios against (c) and
whether the ≤ 20 s target is met. --all also times `make venv` (every extra: what `make test` installs).

Usage: .venv/bin/python bench/onboard.py [--reps 1] [--all] [--no-pip]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from toolkit.ports import free_port  # noqa: E402

TARGET = 20.0


def uv_dir(tmp: Path) -> Path:
    """A PATH entry holding only uv (this venv's or .bootstrap's), for scenario (a)."""
    uv = shutil.which("uv") or next((str(p) for p in (REPO / ".venv/bin/uv", REPO / ".bootstrap/uv/bin/uv") if p.exists()), None)
    if uv is None:
        sys.exit("bench/onboard.py: no uv to put on PATH for scenario (a); run `make venv` first")
    (tmp / "uvbin").mkdir()
    (tmp / "uvbin" / "uv").symlink_to(uv)
    return tmp / "uvbin"


def path_without_uv() -> str:
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "uv").exists())


def first_run(target: str, installer: str, extra_path: Path | None) -> float:
    with tempfile.TemporaryDirectory(prefix="toolkit-onboard-") as tmp_name:
        tmp = Path(tmp_name)
        clone = tmp / "clone"
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "UV_CACHE_DIR")}
        env.update(UV_CACHE_DIR=str(tmp / "uv-cache"), PIP_NO_CACHE_DIR="1", TOOLKIT_INSTALLER=installer,
                   TOOLKIT_ENGINE="embedded", TOOLKIT_PG_PORT=str(free_port()), CI="",
                   PATH=(f"{uv_dir(tmp)}{os.pathsep}" if extra_path else "") + path_without_uv())
        os.sync()
        start = time.perf_counter()
        subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(REPO), str(clone)], check=True)
        done = subprocess.run(["make", "-s", target], cwd=clone, env=env, capture_output=True, text=True)
        took = time.perf_counter() - start
        if (clone / ".venv/bin/toolkit").exists():
            subprocess.run([str(clone / ".venv/bin/toolkit"), "down", "--purge", "--yes"], cwd=clone, env=env,
                           capture_output=True)
        if done.returncode != 0:
            sys.exit(f"bench/onboard.py: make {target} ({installer}) failed:\n{done.stdout}{done.stderr}")
        return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--all", action="store_true", help="also time `make venv` (every extra)")
    parser.add_argument("--no-pip", action="store_true", help="skip the pip-only scenario (the slow one)")
    args = parser.parse_args()
    scenarios = [("(a) uv on PATH", "auto", True), ("(b) uv bootstrapped by pip", "auto", False)]
    if not args.no_pip:
        scenarios.append(("(c) pip only", "pip", False))
    targets = ["db-up"] + (["venv"] if args.all else [])
    for target in targets:
        print(f"fresh clone -> `make {target}` done, empty caches, median of {args.reps}:")
        times = {}
        for name, installer, on_path in scenarios:
            times[name] = statistics.median(first_run(target, installer, Path() if on_path else None)
                                            for _ in range(args.reps))
            print(f"  {name:28} {times[name]:6.1f} s", flush=True)
        pip = times.get("(c) pip only")
        if pip:
            for name in list(times)[:2]:
                print(f"  {name} is {pip / times[name]:.1f}x faster than pip only")
        if target == "db-up":
            worst = max(times[name] for name, _, _ in scenarios[:2])
            print(f"  target <= {TARGET:.0f} s with uv: {'met' if worst <= TARGET else 'MISSED'} ({worst:.1f} s)")


if __name__ == "__main__":
    main()
