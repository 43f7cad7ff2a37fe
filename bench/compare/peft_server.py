"""The baseline a user would otherwise write: transformers + PEFT behind a minimal OpenAI /v1/completions.

    python -m bench.compare.peft_server --base MODEL_DIR --adapter name=PATH ... --mode single|mixed --port 8100

Modes:
  single  one request at a time (a FIFO; each request's own `model.generate` with a KV cache).
  mixed   PEFT's mixed-batch LoRA: up to --max-batch waiting requests (any adapters, base included) run as
          one static batch with `generate(adapter_names=[...])`; a batch runs to its longest request, new
          arrivals wait for the next batch. PEFT 0.21 refuses DoRA in mixed batches ("Cannot pass `adapter_names`
          when DoRA is enabled"), so with a DoRA adapter this mode groups each batch by adapter.
Greedy unless temperature > 0; `ignore_eos` / `min_tokens` honoured by always producing max_tokens.
Binds loopback addresses only.
"""

import argparse
import asyncio
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field

BASE_SENTINEL = "__base__"       # PEFT's adapter_names value for "no adapter"


@dataclass
class Job:
    model: str
    prompt: list[int]
    max_tokens: int
    temperature: float
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue                      # ints (token ids), then None at the end, or an Exception
    produced: int = 0
    done: bool = False
    created: float = field(default_factory=time.time)

    def emit(self, item) -> None:
        self.loop.call_soon_threadsafe(self.out.put_nowait, item)


class _BatchStreamer:
    """transformers streamer for a batch: put() gets the prompt once, then one [B] tensor of new tokens per step."""

    def __init__(self, jobs: list[Job]):
        self.jobs, self.seen_prompt = jobs, False

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        for job, tok in zip(self.jobs, value.reshape(-1).tolist()):
            if not job.done:
                job.produced += 1
                job.emit(int(tok))
                if job.produced >= job.max_tokens:
                    job.done = True
                    job.emit(None)

    def end(self):
        for job in self.jobs:
            if not job.done:
                job.done = True
                job.emit(None)


class Engine:
    """Owns the model on one worker thread; requests arrive through a thread-safe queue."""

    def __init__(self, base: str, adapters: dict[str, str], base_name: str, mode: str, max_batch: int, threads: int,
                 dtype: str = "float32"):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
        torch.set_num_threads(threads)
        self.torch, self.mode, self.max_batch, self.base_name = torch, mode, max_batch, base_name
        self.tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
        self.dora = []
        if adapters:
            names = list(adapters)
            model = PeftModel.from_pretrained(model, adapters[names[0]], adapter_name=names[0])
            for n in names[1:]:
                model.load_adapter(adapters[n], adapter_name=n)
            self.dora = [n for n in names if model.peft_config[n].use_dora]
        self.model = model.eval()
        self.names = set(adapters)
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.q: queue.Queue[Job] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="peft-engine")
        self.thread.start()

    def models(self) -> list[str]:
        return [self.base_name, *sorted(self.names)]

    def _take(self) -> list[Job]:
        """Block for one job; in mixed mode add whatever else is waiting, up to max_batch (DoRA: same adapter only)."""
        first = self.q.get(timeout=0.2)
        jobs = [first]
        if self.mode == "mixed":
            held = []
            while len(jobs) < self.max_batch:
                try:
                    j = self.q.get_nowait()
                except queue.Empty:
                    break
                mixable = not self.dora or j.model == first.model
                (jobs if mixable else held).append(j)
            for j in held:                 # back of the line keeps their relative order
                self.q.put(j)
        return jobs

    def _loop(self):
        while not self.stop.is_set():
            try:
                jobs = self._take()
            except queue.Empty:
                continue
            try:
                self._generate(jobs)
            except Exception as e:  # a failed batch fails its requests, never the server
                for j in jobs:
                    if not j.done:
                        j.done = True
                        j.emit(e)

    def _generate(self, jobs: list[Job]):
        torch = self.torch
        width = max(len(j.prompt) for j in jobs)
        ids = torch.tensor([[self.pad] * (width - len(j.prompt)) + j.prompt for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.prompt)) + [1] * len(j.prompt) for j in jobs])
        n = max(j.max_tokens for j in jobs)
        kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, pad_token_id=self.pad,
                  streamer=_BatchStreamer(jobs), do_sample=jobs[0].temperature > 0)
        if kw["do_sample"]:
            kw["temperature"] = jobs[0].temperature
        names = [j.model if j.model in self.names else BASE_SENTINEL for j in jobs]
        with torch.inference_mode():
            if not self.names:
                self.model.generate(**kw)
            elif self.mode == "mixed" and not self.dora:
                self.model.generate(**kw, adapter_names=names)
            elif names[0] == BASE_SENTINEL:
                with self.model.disable_adapter():
                    self.model.generate(**kw)
            else:
                self.model.set_adapter(names[0])
                self.model.generate(**kw)


def build_app(engine: Engine):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="transformers+PEFT baseline")

    @app.get("/health")
    async def health():
        return {"ok": True}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model"} for m in engine.models()]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        model = body.get("model")
        if model not in engine.models():
            return JSONResponse({"error": {"message": f"The model `{model}` does not exist.", "type": "NotFoundError",
                                           "code": 404}}, status_code=404)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list):
            prompt = prompt[0]
        ids = engine.tok(prompt).input_ids if isinstance(prompt, str) else [int(t) for t in prompt]
        job = Job(model, ids, int(body.get("max_tokens") or 16), float(body.get("temperature") or 0.0),
                  asyncio.get_running_loop(), asyncio.Queue())
        engine.q.put(job)
        rid, created = f"cmpl-{uuid.uuid4().hex[:16]}", int(time.time())

        def chunk(text=None, finish=None, usage=None):
            return {"id": rid, "object": "text_completion", "created": created, "model": model, "usage": usage,
                    "choices": [] if text is None else [{"index": 0, "text": text, "finish_reason": finish}]}

        async def tokens():
            while (item := await job.out.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item

        usage = lambda k: {"prompt_tokens": len(ids), "completion_tokens": k, "total_tokens": len(ids) + k}  # noqa: E731
        if not body.get("stream"):
            try:
                out = [t async for t in tokens()]
            except Exception as e:
                return JSONResponse({"error": {"message": str(e), "type": "InternalError", "code": 500}}, 500)
            return chunk(engine.tok.decode(out), "length", usage(len(out)))

        async def sse():
            k = 0
            try:
                async for t in tokens():
                    k += 1
                    yield f"data: {json.dumps(chunk(engine.tok.decode([t]), 'length' if k == job.max_tokens else None))}\n\n"
            except Exception as e:
                yield f"data: {json.dumps({'error': {'message': str(e), 'code': 500}})}\n\n"
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps(chunk(usage=usage(k)))}\n\n"
            yield "data: [DONE]\n\n"
        return StreamingResponse(sse(), media_type="text/event-stream")

    return app


def main(argv: list[str] | None = None) -> int:
    from bench.load.config import is_loopback_host
    p = argparse.ArgumentParser(prog="python -m bench.compare.peft_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--base-name", default="base", help="the `model` name that selects the base (no adapter)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--mode", choices=("single", "mixed"), default="single")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="torch dtype of base and adapters")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    a = p.parse_args(argv)
    if not is_loopback_host(a.host):
        p.error(f"--host {a.host}: only loopback addresses (127.0.0.0/8, localhost, ::1)")
    adapters = dict(x.split("=", 1) for x in a.adapter)
    engine = Engine(a.base, adapters, a.base_name, a.mode, a.max_batch if a.mode == "mixed" else 1, a.threads, a.dtype)
    if engine.dora and a.mode == "mixed":
        print(f"peft_server: DoRA adapters {engine.dora}: PEFT cannot mix DoRA in one batch; batches grouped by adapter",
              flush=True)
    import uvicorn
    print(f"peft_server: mode={a.mode} adapters={len(adapters)} on http://{a.host}:{a.port}", flush=True)
    uvicorn.run(build_app(engine), host=a.host, port=a.port, log_level="warning")
    engine.stop.set()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
