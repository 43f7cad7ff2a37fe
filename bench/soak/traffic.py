"""The soak's traffic and adapter churn against one running hylorada-serve (bench/soak/cli.py starts it).

`Soak.worker` threads send seeded mixed requests and check each answer; `Soak.swapper` replaces or removes
DIR/swap-a; `Soak.dropper` drops one broken adapter at a time (bench/soak/bad_adapters.py) and checks it is refused.
Every outcome is counted as kind:ok or kind:UNEXPECTED in `Soak.outcomes`.
"""
from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from hylorada.format.atomic import atomic_dir

from .bad_adapters import BUILDERS, remove

API, ADMIN = "soak-api-key", "soak-admin-key"
DEMO = ["demo-lora", "demo-dora", "demo-hylorada"]
SWAP, PROMPT, N_NEW = "swap-a", [5, 77, 140, 33, 9], 8


# The routes that reach the engine besides /v1/completions and /v1/chat/completions (hylorada_serve/routes.py ADMIT):
# path -> (model, n) -> (body, headers), and path -> "the answer came back whole".
ROUTES = {
    "/v1/messages": lambda m, n: ({"model": m, "max_tokens": n, "stream": True,
                                   "messages": [{"role": "user", "content": "tell me"}]}, {}),
    "/v1/responses": lambda m, n: ({"model": m, "input": "tell me", "max_output_tokens": n}, {}),
    "/invocations": lambda m, n: ({"model": "tiny-llama", "prompt": "tell me", "max_tokens": n, "ignore_eos": True,
                                   "stream": True},
                                  {} if m == "tiny-llama" else {"X-Amzn-SageMaker-Adapter-Identifier": m}),
    "/v1/chat/completions/batch": lambda m, n: ({"model": m, "max_tokens": n, "ignore_eos": True,
                                                 "messages": [[{"role": "user", "content": "a"}],
                                                              [{"role": "user", "content": "b c"}]]}, {}),
}
ROUTE_DONE = {
    "/v1/messages": lambda text: "message_stop" in text,
    "/v1/responses": lambda text: '"output"' in text,
    "/invocations": lambda text: text.rstrip().endswith("data: [DONE]"),
    "/v1/chat/completions/batch": lambda text: text.count('"finish_reason"') == 2,
}


class Soak:
    def __init__(self, url: str, adapters: Path, spare: Path, a):
        self.url, self.adapters, self.spare, self.a = url, adapters, spare, a
        self.h = {"Authorization": f"Bearer {API}"}
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.outcomes, self.unexpected, self.absent = Counter(), [], []    # absent: [start, end|None] for swap-a
        self.baseline, self.bad_live, self.bad_log, self.swaps = {}, [], [], []
        self.swap_src = "demo-lora"

    # ---- traffic ----------------------------------------------------------------------------------------------
    def note(self, kind: str, ok: bool, detail=None) -> None:
        with self.lock:
            self.outcomes[kind + (":ok" if ok else ":UNEXPECTED")] += 1
            if not ok and len(self.unexpected) < 50:
                self.unexpected.append({"t": round(time.time() - self.t0, 1), "kind": kind, "detail": str(detail)[:300]})

    def greedy(self, http: httpx.Client, model: str) -> httpx.Response:
        return http.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": N_NEW, "temperature": 0,
                                                  "ignore_eos": True, "return_token_ids": True})

    def was_absent(self, t0: float, t1: float) -> bool:
        with self.lock:
            return any(s <= t1 and (e is None or e >= t0) for s, e in self.absent)

    def one(self, http: httpx.Client, rng: random.Random) -> None:
        model = rng.choice(["tiny-llama", *DEMO, SWAP, SWAP])
        kind = rng.choices(["greedy", "sample", "chat", "stream", "hangup", "404", "route"], [4, 3, 2, 2, 1, 1, 2])[0]
        t0 = time.time()
        try:
            if kind == "route":
                return self.route(http, rng, model, t0)
            if kind == "404":
                with self.lock:
                    name = rng.choice(self.bad_live or ["no-such-adapter"])
                r = http.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2})
                return self.note(kind, r.status_code == 404, (name, r.status_code))
            if kind == "hangup":
                body = {"model": model, "prompt": "the cat", "max_tokens": 200, "ignore_eos": True, "stream": True}
                with http.stream("POST", "/v1/completions", json=body) as r:
                    ok = r.status_code == 200 and next(r.iter_lines(), None) is not None
                return self.note(kind, ok or self.absent_404(model, r.status_code, t0), r.status_code)
            if kind == "greedy":
                r = self.greedy(http, model)
                if r.status_code != 200:
                    return self.note(kind, self.absent_404(model, r.status_code, t0), (model, r.status_code, r.text[:200]))
                ids = r.json()["choices"][0]["token_ids"]
                want = [self.baseline["demo-lora"], self.baseline["demo-dora"]] if model == SWAP else [self.baseline[model]]
                return self.note(kind, ids in want, (model, r.headers.get("x-hylorada-adapter-version"), ids))
            if kind == "chat":
                n = rng.randint(2, 24)
                r = http.post("/v1/chat/completions", json={"model": model, "max_tokens": n, "ignore_eos": True,
                              "messages": [{"role": "user", "content": rng.choice(["hello", "the cat", "a b c d"])}]})
                ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == n
                return self.note(kind, ok or self.absent_404(model, r.status_code, t0), (model, r.status_code))
            n = rng.randint(2, 32)
            body = {"model": model, "prompt": [rng.randrange(3, 500) for _ in range(rng.randint(1, 64))], "max_tokens": n,
                    "ignore_eos": True, "temperature": 0.8, "seed": rng.randrange(1 << 30)}
            if kind == "stream":
                with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                    lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
                ok = r.status_code == 200 and lines[-1:] == ["data: [DONE]"]
            else:
                r = http.post("/v1/completions", json=body)
                ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == n
            self.note(kind, ok or self.absent_404(model, r.status_code, t0), (model, r.status_code))
        except httpx.HTTPError as e:
            self.note(kind, False, (model, type(e).__name__, str(e)[:200]))

    def route(self, http: httpx.Client, rng: random.Random, model: str, t0: float) -> None:
        """One request on a route other than completions/chat: each must pin its adapter version like those do
        (before the fix, a hot-swap under /v1/messages streams killed the engine)."""
        n, path = rng.randint(2, 24), rng.choice(sorted(ROUTES))
        body, headers = ROUTES[path](model, n)
        with http.stream("POST", path, json=body, headers=headers) as r:
            data = b"".join(r.iter_bytes()).decode(errors="replace")
        served = r.headers.get("x-hylorada-adapter")
        ok = r.status_code == 200 and ROUTE_DONE[path](data) and (model == "tiny-llama" or served == model)
        self.note(f"route{path}", ok or self.absent_404(model, r.status_code, t0), (model, r.status_code, served, data[-200:]))

    def absent_404(self, model: str, code: int, t0: float) -> bool:
        return model == SWAP and code == 404 and self.was_absent(t0, time.time())

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, headers=self.h, timeout=120) as http:
            while not self.stop.is_set():
                self.one(http, rng)

    # ---- adapters: swaps and bad drops ------------------------------------------------------------------------
    def status(self, http: httpx.Client) -> dict:
        r = http.get("/v1/adapters", headers={"Authorization": f"Bearer {ADMIN}"})
        return {a["name"]: a for a in r.json()["data"]}

    def wait(self, http, pred, bound: float = 60) -> bool:
        deadline = time.time() + bound
        while time.time() < deadline:
            if pred(self.status(http)):
                return True
            time.sleep(0.2)
        return False

    def put_swap(self, src: str) -> None:
        """DIR/swap-a := a copy of spare/src, published by one rename over the old version (atomic_dir)."""
        with atomic_dir(self.adapters / SWAP, replace=True) as tmp:
            shutil.copytree(self.spare / src, tmp, dirs_exist_ok=True)
        self.swap_src = src

    def swapper(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            k = 0
            while not self.stop.wait(self.a.swap_every):
                k += 1
                t0, before = time.time(), self.status(http).get(SWAP, {}).get("version") or 0
                if k % 4 == 0:                                   # remove for a few seconds, then bring back
                    with self.lock:
                        self.absent.append([time.time(), None])
                    shutil.rmtree(self.adapters / SWAP)
                    self.stop.wait(3)
                    self.put_swap(self.swap_src)
                    ok = self.wait(http, lambda s: s.get(SWAP, {}).get("status") == "ready")
                    with self.lock:
                        self.absent[-1][1] = time.time()
                    action = "remove+readd"
                else:
                    self.put_swap("demo-dora" if self.swap_src == "demo-lora" else "demo-lora")
                    ok = self.wait(http, lambda s: (s.get(SWAP, {}).get("version") or 0) > before)
                    action = "replace"
                self.swaps.append({"t": round(t0 - self.t0, 1), "action": action, "ok": ok,
                                   "seconds": round(time.time() - t0, 2)})

    def dropper(self) -> None:
        cases = sorted(BUILDERS)
        with httpx.Client(base_url=self.url, timeout=60) as http:
            k = 0
            while not self.stop.wait(self.a.bad_every):
                case, k = cases[k % len(cases)], k + 1
                name = f"bad-{case}-{k}"
                kw = {"outside": self.adapters.parent / f"outside-{name}"} if case.startswith("symlink") else {}
                name = BUILDERS[case](self.spare / "demo-lora", self.adapters / name, None, **kw).name
                with self.lock:
                    self.bad_live.append(name)
                ok = self.wait(http, lambda s: s.get(name, {}).get("status") == "refused", 30)
                self.bad_log.append({"name": name, "refused": ok})
                with self.lock:
                    self.bad_live.remove(name)
                remove(self.adapters / name)            # iterative: deep-nesting is too deep for rmtree
                out = self.adapters.parent / f"outside-{name}"
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)
