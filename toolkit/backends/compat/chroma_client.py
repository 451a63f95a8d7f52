"""chromadb's client API, answered by a worker process running an older chromadb (room: backends/compat/).

``WorkerClient`` and ``WorkerCollection`` offer the calls ``ChromaStore`` makes (get_or_create_collection,
get_collection, delete_collection, get_max_batch_size; upsert, query, get, count, delete), with the same
shapes of arguments and results, so the store does not care which side of the pipe it talks to. One
worker per client; calls are serialised (the protocol is one request at a time).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import IO, Any

WORKER = Path(__file__).with_name("chroma_worker.py")


class WorkerError(Exception):
    """A call the worker answered with a failure, or a worker that died."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class NotFound(WorkerError):
    pass


class InvalidArgument(WorkerError):
    pass


_KINDS = {"not_found": NotFound, "invalid_argument": InvalidArgument}


class WorkerClient:
    """A chromadb client (persistent directory or HTTP server) living in ``python``'s environment."""

    def __init__(self, python: Path, *, path: str | None = None, host: str | None = None,
                 port: int | None = None) -> None:
        self._lock = threading.Lock()
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        environ["ANONYMIZED_TELEMETRY"] = "False"
        # -I: the worker sees its own environment only, not the toolkit's sources beside it
        self._proc = subprocess.Popen([str(python), "-I", str(WORKER)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, env=environ)
        self._finalizer = weakref.finalize(self, _stop, self._proc, self._stderr)
        opened, _ = self._call({"op": "open", "path": path, "host": host, "port": port})
        self.version: str = opened["version"]
        self._max_batch_size = int(opened["max_batch_size"])

    # -- the client API --------------------------------------------------------------------------

    def get_max_batch_size(self) -> int:
        return self._max_batch_size

    def get_or_create_collection(self, name: str, embedding_function: Any = None) -> WorkerCollection:
        self._call({"op": "get_or_create_collection", "name": name})
        return WorkerCollection(self, name)

    def get_collection(self, name: str, embedding_function: Any = None) -> WorkerCollection:
        self._call({"op": "get_collection", "name": name})
        return WorkerCollection(self, name)

    def delete_collection(self, name: str) -> None:
        self._call({"op": "delete_collection", "name": name})

    def close(self) -> None:
        self._finalizer()

    # -- the pipe --------------------------------------------------------------------------------

    def _call(self, request: dict[str, Any], vectors: Any = None) -> tuple[dict[str, Any], Any]:
        import numpy as np

        blob = b""
        if vectors is not None:
            data = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
            request["shape"] = list(data.shape)
            blob = data.tobytes()
        request["nbytes"] = len(blob)
        with self._lock:
            stdin, stdout = self._proc.stdin, self._proc.stdout
            assert stdin is not None and stdout is not None
            try:
                stdin.write(json.dumps(request).encode() + b"\n" + blob)
                stdin.flush()
                line = stdout.readline()
                answer = json.loads(line) if line else None
                payload = stdout.read(answer["nbytes"]) if answer and answer.get("nbytes") else b""
            except (BrokenPipeError, OSError, ValueError):
                answer = None
            if answer is None:
                raise WorkerError("other", f"the chromadb worker stopped ({self._last_error()})")
        if not answer.pop("ok"):
            raise _KINDS.get(answer["kind"], WorkerError)(answer["kind"], answer["message"])
        matrix = None
        if answer.get("shape"):
            matrix = np.frombuffer(payload, dtype=np.float32).reshape(answer["shape"])
        return answer, matrix

    def _last_error(self) -> str:
        self._proc.poll()
        self._stderr.seek(0)
        lines = [line for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        code = self._proc.returncode
        last = lines[-1].strip() if lines else "no output"
        return f"exit code {code}: {last}" if code is not None else last


class WorkerCollection:
    def __init__(self, client: WorkerClient, name: str) -> None:
        self._client = client
        self.name = name

    def count(self) -> int:
        answer, _ = self._client._call({"op": "count", "name": self.name})
        return int(answer["count"])

    def upsert(self, *, ids: list[str], embeddings: Any, documents: list[str], metadatas: list[dict[str, Any]]) -> None:
        self._client._call({"op": "upsert", "name": self.name, "ids": ids, "documents": documents,
                            "metadatas": metadatas}, embeddings)

    def delete(self, *, ids: list[str]) -> None:
        self._client._call({"op": "delete", "name": self.name, "ids": ids})

    def get(self, *, ids: list[str] | None = None, where: dict[str, Any] | None = None, limit: int | None = None,
            offset: int | None = None, include: list[str] | None = None) -> dict[str, Any]:
        include = list(include if include is not None else ["documents", "metadatas"])
        answer, matrix = self._client._call({"op": "get", "name": self.name, "ids": ids, "where": where,
                                             "limit": limit, "offset": offset, "include": include})
        return {"ids": answer["ids"], "documents": answer["documents"], "metadatas": answer["metadatas"],
                "embeddings": matrix if matrix is not None or "embeddings" not in include else _empty()}

    def query(self, *, query_embeddings: Any, n_results: int, where: dict[str, Any] | None = None,
              include: list[str] | None = None) -> dict[str, Any]:
        include = list(include if include is not None else ["documents", "metadatas", "distances"])
        answer, matrix = self._client._call({"op": "query", "name": self.name, "n_results": n_results,
                                             "where": where, "include": include}, query_embeddings)
        embeddings = matrix if matrix is not None else (_empty() if "embeddings" in include else None)
        return {"ids": [answer["ids"]], "documents": [answer["documents"]], "metadatas": [answer["metadatas"]],
                "embeddings": [embeddings]}


def _empty() -> Any:
    import numpy as np

    return np.zeros((0, 0), dtype=np.float32)


def _stop(proc: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
    try:
        if proc.stdin:
            proc.stdin.close()  # end of input: the worker returns
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    finally:
        if proc.stdout:
            proc.stdout.close()
        stderr.close()
