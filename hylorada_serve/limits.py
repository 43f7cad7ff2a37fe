"""BodyLimitMiddleware: refuse request bodies over `--max-body-mb` with 413 before the app reads them.

vLLM's OpenAI app (FastAPI) reads a whole JSON body into memory before validating it, and uvicorn sets no
size limit, so one client posting gigabytes could take the server's memory. Here:

  * a declared `Content-Length` above the limit is answered 413 at once (nothing is read);
  * a body without one (chunked transfer) is read up to the limit, then answered 413, or replayed to the
    app unchanged when it fits (the app would have buffered it all anyway);
  * a declared length within the limit passes through untouched (the HTTP server enforces the framing).

The limit counts bytes on the wire. 16 MiB (the default) holds a prompt of well over a million tokens as
text or token ids; 0 turns the limit off.
"""
from __future__ import annotations

from fastapi.responses import JSONResponse

BODY_METHODS = (b"POST", b"PUT", b"PATCH")


def _error(status: int, message: str, err_type: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": err_type, "param": None, "code": status}},
                        status_code=status)


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    def too_large(self) -> JSONResponse:
        return _error(413, f"request body larger than {self.max_bytes} bytes (--max-body-mb)", "RequestTooLargeError")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.max_bytes <= 0 or scope.get("method", "").encode() not in BODY_METHODS:
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return await _error(400, "malformed Content-Length header", "BadRequestError")(scope, receive, send)
            if n > self.max_bytes:
                return await self.too_large()(scope, receive, send)
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:                                      # chunked: buffer up to the limit, then replay
            msg = await receive()
            if msg["type"] != "http.request":            # client went away
                return
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                return await self.too_large()(scope, receive, send)
            messages.append(msg)
            if not msg.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)
