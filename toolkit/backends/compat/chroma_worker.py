"""Runs inside an isolated environment holding an older chromadb (0.4 or 0.5), never inside the toolkit's.

It imports nothing of the toolkit. Protocol, one request at a time over stdin/stdout: a line of JSON (the
request or the answer), followed by ``nbytes`` raw bytes when the line says so: a float32 matrix of
``shape`` (embeddings) in C order. Answers carry ``ok``; failures carry ``kind`` (not_found,
invalid_argument, other) and the message. End of stdin ends the worker.
"""

import json
import os
import sys


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    inp = sys.stdin.buffer
    import chromadb
    import numpy as np
    from chromadb.config import Settings

    state: dict = {"client": None, "collections": {}}

    def send(answer, blob=b""):
        answer["nbytes"] = len(blob)
        out.write(json.dumps(answer).encode() + b"\n")
        if blob:
            out.write(blob)
        out.flush()

    def matrix(rows):
        if rows is None:
            return None, b""
        if len(rows) == 0:
            return [0, 0], b""
        data = np.asarray([np.asarray(r, dtype=np.float32) for r in rows], dtype=np.float32)
        if data.ndim != 2:
            data = data.reshape(len(rows), -1)
        return list(data.shape), np.ascontiguousarray(data).tobytes()

    def collection(name):
        found = state["collections"].get(name)
        if found is None:
            found = state["client"].get_collection(name, embedding_function=None)
            state["collections"][name] = found
        return found

    def handle(req, payload):
        op = req["op"]
        vectors = None
        if req.get("shape"):
            vectors = np.frombuffer(payload, dtype=np.float32).reshape(req["shape"])
        if op == "open":
            settings = Settings(anonymized_telemetry=False)
            if req.get("path"):
                state["client"] = chromadb.PersistentClient(path=req["path"], settings=settings)
            else:
                state["client"] = chromadb.HttpClient(host=req["host"], port=req["port"], settings=settings)
                state["client"].heartbeat()
            client = state["client"]
            size = client.get_max_batch_size() if hasattr(client, "get_max_batch_size") else client.max_batch_size
            return {"version": chromadb.__version__, "max_batch_size": int(size)}, b""
        client = state["client"]
        name = req.get("name")
        if op == "get_or_create_collection":
            state["collections"][name] = client.get_or_create_collection(name, embedding_function=None)
            return {}, b""
        if op == "get_collection":
            state["collections"].pop(name, None)
            collection(name)
            return {}, b""
        if op == "delete_collection":
            state["collections"].pop(name, None)
            client.delete_collection(name)
            return {}, b""
        if op == "count":
            return {"count": int(collection(name).count())}, b""
        if op == "upsert":
            collection(name).upsert(ids=req["ids"], embeddings=vectors.tolist(), documents=req["documents"],
                                    metadatas=req["metadatas"])
            return {}, b""
        if op == "delete":
            collection(name).delete(ids=req["ids"])
            return {}, b""
        if op == "get":
            got = collection(name).get(ids=req.get("ids"), where=req.get("where"), limit=req.get("limit"),
                                       offset=req.get("offset"), include=req["include"])
            shape, blob = matrix(got.get("embeddings") if "embeddings" in req["include"] else None)
            return {"ids": got["ids"], "documents": got.get("documents"), "metadatas": got.get("metadatas"),
                    "shape": shape}, blob
        if op == "query":
            got = collection(name).query(query_embeddings=vectors.tolist(), n_results=req["n_results"],
                                         where=req.get("where"), include=req["include"])
            shape, blob = matrix(got["embeddings"][0] if "embeddings" in req["include"] else None)
            return {"ids": got["ids"][0], "documents": (got.get("documents") or [None])[0],
                    "metadatas": (got.get("metadatas") or [None])[0], "shape": shape}, blob
        raise ValueError(f"unknown operation {op!r}")

    while True:
        line = inp.readline()
        if not line:
            return
        req = json.loads(line)
        payload = inp.read(req["nbytes"]) if req.get("nbytes") else b""
        try:
            answer, blob = handle(req, payload)
            send({"ok": True, **answer}, blob)
        except Exception as exc:  # every failure is an answer; the caller decides what it means
            text = str(exc)
            kind = "other"
            if "does not exist" in text or type(exc).__name__ in ("NotFoundError", "InvalidCollectionException"):
                kind = "not_found"
            elif isinstance(exc, ValueError) or "dimension" in text.lower():
                kind = "invalid_argument"
            send({"ok": False, "kind": kind, "message": text})


if __name__ == "__main__":
    main()
