"""Asynchronous streaming client: sends the workload to {url}/v1/completions on its arrival schedule.

Each request is sent at its arrival time (or later, when max_concurrency requests are already in
flight), streamed (SSE), and timed per chunk. Bounded: every request has a timeout and the whole
run a deadline, after which whatever is unfinished is cancelled and recorded as an error.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from .config import BenchConfig, check_loopback_url
from .metrics import RequestRecord
from .workload import Request


def request_body(cfg: BenchConfig, req: Request, output_len: int | None = None) -> dict:
    """An OpenAI completions body with token-id prompt, exact output length (ignore_eos) and usage in the stream."""
    n = output_len or req.output_len
    return {"model": req.adapter, "prompt": list(req.prompt_tokens), "max_tokens": n, "temperature": cfg.temperature,
            "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True, "min_tokens": n,
            } | cfg.extra_body


async def send_one(session: aiohttp.ClientSession, cfg: BenchConfig, req: Request, rec: RequestRecord,
                   t0: float, output_len: int | None = None) -> None:
    """Stream one request, filling rec (times relative to t0). Never raises: failures land in rec.error."""
    start = time.perf_counter()
    rec.send_s = start - t0
    last, chunks, usage_tokens = None, 0, None
    try:
        timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
        async with session.post(cfg.url.rstrip("/") + "/v1/completions", json=request_body(cfg, req, output_len),
                                timeout=timeout) as resp:
            if resp.status != 200:
                rec.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for raw in resp.content:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if msg.get("error"):
                    rec.error = f"stream error: {str(msg['error'])[:200]}"
                    return
                if msg.get("usage") and msg["usage"].get("completion_tokens") is not None:
                    usage_tokens = int(msg["usage"]["completion_tokens"])
                if not msg.get("choices"):
                    continue
                now = time.perf_counter()
                if last is None:
                    rec.ttft_s = now - start
                else:
                    rec.itl_s.append(now - last)
                last, chunks = now, chunks + 1
        end = last if last is not None else time.perf_counter()
        rec.e2e_s = end - start
        rec.output_tokens = usage_tokens if usage_tokens is not None else chunks
        if rec.ttft_s is None:
            rec.error = "no token streamed"
    except asyncio.TimeoutError:
        rec.error = f"timeout after {cfg.request_timeout_s:.0f} s"
    except (aiohttp.ClientError, ValueError) as e:
        rec.error = f"{type(e).__name__}: {str(e)[:200]}"


async def _warmup(session: aiohttp.ClientSession, cfg: BenchConfig, requests: list[Request]) -> list[str]:
    """cfg.warmup short requests (4 output tokens) cycling over the adapters; returns their errors."""
    if not cfg.warmup or not requests:
        return []
    picks = [Request(-1 - k, 0.0, cfg.adapters[k % len(cfg.adapters)], requests[k % len(requests)].prompt_tokens, 4)
             for k in range(cfg.warmup)]
    recs = [RequestRecord(r.index, r.adapter, len(r.prompt_tokens), 4) for r in picks]
    sem = asyncio.Semaphore(cfg.max_concurrency)

    async def go(r, rec):
        async with sem:
            await send_one(session, cfg, r, rec, time.perf_counter(), output_len=4)
    await asyncio.wait_for(asyncio.gather(*(go(r, rec) for r, rec in zip(picks, recs))), cfg.max_total_s)
    return [f"{rec.adapter}: {rec.error}" for rec in recs if rec.error]


async def run_requests(cfg: BenchConfig, requests: list[Request], on_done=None) -> tuple[list[RequestRecord], float, list[str]]:
    """Run the workload; returns (records in request order, wall seconds first send -> last completion, warm-up errors).

    on_done(rec) is called after each request finishes (progress display).
    """
    check_loopback_url(cfg.url)
    records = [RequestRecord(r.index, r.adapter, len(r.prompt_tokens), r.output_len) for r in requests]
    connector = aiohttp.TCPConnector(limit=cfg.max_concurrency + 4)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        warm_errors = await _warmup(session, cfg, requests)
        sem = asyncio.Semaphore(cfg.max_concurrency)
        t0 = time.perf_counter()

        async def one(req: Request, rec: RequestRecord):
            delay = req.arrival_s - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            async with sem:
                await send_one(session, cfg, req, rec, t0)
            if on_done is not None:
                on_done(rec)

        tasks = [asyncio.create_task(one(r, rec)) for r, rec in zip(requests, records)]
        done, pending = await asyncio.wait(tasks, timeout=cfg.max_total_s)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for rec in records:
            if rec.e2e_s is None and rec.error is None:
                rec.error = f"cancelled at the run deadline ({cfg.max_total_s:.0f} s)"
    ends = [rec.send_s + rec.e2e_s for rec in records if rec.ok]
    starts = [rec.send_s for rec in records if rec.ok]
    wall = (max(ends) - min(starts)) if ends else 0.0
    return records, wall, warm_errors
