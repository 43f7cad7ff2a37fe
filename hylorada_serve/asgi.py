"""Small ASGI pieces the middlewares share: OpenAI's error response, and a request body read whole then replayed."""
from __future__ import annotations

import json

from fastapi.responses import JSONResponse


def error(status: int, message: str, err_type: str, param: str | None = None,
          headers: dict | None = None) -> JSONResponse:
    """OpenAI's error shape (the one vLLM answers with)."""
    return JSONResponse({"error": {"message": message, "type": err_type, "param": param, "code": status}},
                        status_code=status, headers=headers)


async def read_body(receive) -> bytes | None:
    """The whole request body (BodyLimitMiddleware, outside every caller, bounds it), or None when the client went
    away first."""
    chunks = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return None
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive):
    """A `receive` that hands the app `body` once, then the real receive (disconnect notices)."""
    sent = [False]

    async def replay():
        if sent[0]:
            return await receive()
        sent[0] = True
        return {"type": "http.request", "body": body, "more_body": False}
    return replay


def json_object(body: bytes) -> dict | None:
    """The body as a JSON object, or None (not JSON, or not an object: left for vLLM's own 400)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None
