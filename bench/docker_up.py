"""Benchmark room: `toolkit up --engine docker` vs the raw floor, measured in one run.

Both start Postgres+pgvector from the same image (present locally: the offline image, built if
missing) on a fresh volume and stop when a client can use the vector type:
  toolkit  `toolkit up --engine docker` (a new process: CLI start-up, container create, init-script
           bootstrap of role/database/extension, readiness probe)
  raw      `docker run -d ...` + a tight psycopg connect loop + CREATE EXTENSION vector
Several repetitions, median; prints the ratio (target <= 1.2x). Usage: python bench/docker_up.py [REPS]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

from toolkit.engines import docker as dk
from toolkit.engines.docker_image import OFFLINE_IMAGE, build_image
from toolkit.ports import free_port


def _clean(api, name: str, volume: str) -> None:
    from docker.errors import NotFound

    for remove in (lambda: api.containers.get(name).remove(force=True, v=True), lambda: api.volumes.get(volume).remove()):
        try:
            remove()
        except NotFound:
            pass


def toolkit_up(api, project: str) -> float:
    name, port = f"bench-tk-{uuid.uuid4().hex[:8]}", free_port()
    os.sync()  # initdb in the container fsyncs: neither side pays for the other's writeback
    env = {**os.environ, "TOOLKIT_PG_IMAGE": OFFLINE_IMAGE, "TOOLKIT_PG_CONTAINER": name,
           "TOOLKIT_PG_VOLUME": name, "TOOLKIT_PG_PORT": str(port)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "toolkit", "up", "--engine", "docker", "--no-export"], env=env,
                   cwd=project, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    _clean(api, name, name)
    return elapsed


def raw_up(api) -> float:
    import psycopg

    name, port = f"bench-raw-{uuid.uuid4().hex[:8]}", free_port()
    os.sync()
    started = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:5432",
                    "-e", "POSTGRES_USER=memgpt", "-e", "POSTGRES_PASSWORD=memgpt", "-e", "POSTGRES_DB=memgpt",
                    "-v", f"{name}:/var/lib/postgresql/data", OFFLINE_IMAGE], check=True, capture_output=True)
    while True:
        try:
            with psycopg.connect(f"postgresql://memgpt:memgpt@127.0.0.1:{port}/memgpt", autocommit=True,
                                 connect_timeout=2) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'").fetchone()
                break
        except psycopg.OperationalError:
            time.sleep(0.01)
    elapsed = time.perf_counter() - started
    _clean(api, name, name)
    return elapsed


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    api = dk.client()
    try:
        api.images.get(OFFLINE_IMAGE)
    except Exception:  # noqa: BLE001 - not built yet
        build_image(api, OFFLINE_IMAGE)
    toolkit_times, raw_times = [], []
    with tempfile.TemporaryDirectory() as project:
        raw_up(api)  # warm the page cache for the image's files; not counted
        for _ in range(reps):  # interleaved, so drift on the machine hits both sides alike
            raw_times.append(raw_up(api))
            toolkit_times.append(toolkit_up(api, project))
    raw, tk = statistics.median(raw_times), statistics.median(toolkit_times)
    print(f"docker up, fresh volume, image present ({OFFLINE_IMAGE}), {reps} reps, median:")
    print(f"  raw docker run + connect loop : {raw:.3f} s   {', '.join(f'{t:.2f}' for t in raw_times)}")
    print(f"  toolkit up --engine docker    : {tk:.3f} s   {', '.join(f'{t:.2f}' for t in toolkit_times)}")
    print(f"  ratio {tk / raw:.2f}x (target <= 1.20x)")


if __name__ == "__main__":
    main()
