"""Soak: a bounded run of mixed traffic against one real hylorada-serve, with periodic adapter swaps and bad
adapters dropped into DIR/, watching for unexpected errors and resident-memory growth.

    python bench/soak.py [--minutes 10] [--workers 4] [--swap-every 20] [--bad-every 30] [--sample-every 5]
    make soak                     # the same, 10 minutes

Traffic (seeded worker threads): greedy completions (tokens must equal the first answer for that model; for the
swapped adapter one of its two weight sets, never a mix), sampled completions (usage == max_tokens), chat, streams
(must end with [DONE]), clients hanging up after the first chunk, and requests for bad/unknown names (must be 404).
The swapper alternates DIR/swap-a between the demo LoRA and DoRA weights (one rename) and every 4th time removes it
for 3 s (a 404 for swap-a is expected only then). The dropper puts a broken adapter (tests/serve/bad_adapters.py,
cycling the cases) into DIR/, checks it is refused, then deletes it. RSS = every process of the server's session,
sampled every few seconds; the slope is fitted after the warm-up (first 20 %). At the end every adapter's greedy
answer is compared with hylorada.reference.served.ServedReference; then SIGTERM (must exit 0, no process left).
Writes bench/results/soak.json and soak.png; the last line printed is a JSON summary.

Memory diagnosis (bench/soak_mem.py): --memprobe (malloc in use vs free, Python objects, per process, and one
malloc_trim at the end), --env K=V (e.g. an allocator setting), --upstream (the same traffic against stock vLLM,
without swaps or bad adapters). Growth is reported per minute and per 1000 requests served.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import soak_mem                            # noqa: E402
from bench import soak_report as report              # noqa: E402
from bench.hotswap import free_port, wait_healthy    # noqa: E402
from tests.serve.bad_adapters import BUILDERS         # noqa: E402

API, ADMIN = "soak-api-key", "soak-admin-key"
DEMO = ["demo-lora", "demo-dora", "demo-hylorada"]
SWAP, PROMPT, N_NEW = "swap-a", [5, 77, 140, 33, 9], 8


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
        kind = rng.choices(["greedy", "sample", "chat", "stream", "hangup", "404"], [4, 3, 2, 2, 1, 1])[0]
        t0 = time.time()
        try:
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
        tmp = self.adapters / f".{SWAP}.tmp-{uuid.uuid4().hex[:6]}"
        shutil.copytree(self.spare / src, tmp)
        old = self.adapters / f".{SWAP}.old-{uuid.uuid4().hex[:6]}"
        if (self.adapters / SWAP).exists():
            (self.adapters / SWAP).rename(old)
        tmp.rename(self.adapters / SWAP)
        shutil.rmtree(old, ignore_errors=True)
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
                BUILDERS[case](self.spare / "demo-lora", self.adapters / name, None, **kw)
                with self.lock:
                    self.bad_live.append(name)
                ok = self.wait(http, lambda s: s.get(name, {}).get("status") == "refused", 30)
                self.bad_log.append({"name": name, "refused": ok})
                with self.lock:
                    self.bad_live.remove(name)
                p = self.adapters / name
                p.unlink() if p.is_symlink() else shutil.rmtree(p, ignore_errors=True)
                out = self.adapters.parent / f"outside-{name}"
                shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink(missing_ok=True)


ENGINE = ["--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "8", "--max-loras", "4",
          "--max-cpu-loras", "8", "--kv-cache-memory-bytes", str(512 << 20)]


def start(base: Path, adapters: Path, log: Path, a, env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if a.upstream:     # stock vLLM, same engine settings, the same adapters fixed at start (swap-a = demo-lora)
        cmd = soak_mem.upstream_cmd(base, port, {n: adapters / n for n in [*DEMO, SWAP]}, ENGINE)
        env = {**env, "VLLM_PLUGINS": soak_mem.UPSTREAM_PLUGINS}
    else:
        cmd = [sys.executable, "-m", "hylorada_serve.cli", "--base", str(base), "--adapters", str(adapters), "--port",
               str(port), "--api-key", API, "--admin-key", ADMIN, "--stable-seconds", "1", "--poll-interval", "0.5",
               *ENGINE]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                            env={**os.environ, "VLLM_HOST_IP": "127.0.0.1", **env})
    print(f"server pid {proc.pid} (own session), log {log}", flush=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_healthy(proc, url, a.start_timeout):
            return proc, url
    except BaseException:
        stop_server(proc)
        raise
    stop_server(proc)
    raise SystemExit(f"server did not start; see {log}")


def stop_server(proc: subprocess.Popen) -> tuple[int | None, int]:
    """SIGTERM, bounded wait; (exit code, processes of its session still alive before the final SIGKILL)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
    time.sleep(2)
    left = report.session_rss_mb(proc.pid)[1]
    if proc.poll() is None or left:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    return proc.returncode, left


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="length of the traffic phase (default 10)")
    p.add_argument("--workers", type=int, default=4, help="client threads sending requests (default 4)")
    p.add_argument("--swap-every", type=float, default=20.0, help="seconds between swaps of DIR/swap-a (default 20)")
    p.add_argument("--bad-every", type=float, default=30.0, help="seconds between bad adapters dropped (default 30)")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples (default 5)")
    p.add_argument("--warmup-frac", type=float, default=0.2,
                   help="share of the run before the slope is fitted (default 0.2)")
    p.add_argument("--window-minutes", type=float, default=10.0,
                   help="growth is also fitted per window of about this length, at least 3 (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the traffic mix (default 0)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak"),
                   help="result path without extension: writes OUT.json and OUT.png (default bench/results/soak)")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds the server may take to start")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the server")
    p.add_argument("--memprobe", action="store_true", help="per-process malloc/Python probe (bench/memprobe)")
    p.add_argument("--upstream", action="store_true", help="stock vLLM instead of hylorada-serve (no swaps, no bad)")
    a = p.parse_args(argv)
    for opt in ("minutes", "workers", "window_minutes", "sample_every", "start_timeout"):
        if not getattr(a, opt) > 0:
            p.error(f"--{opt.replace('_', '-')} must be > 0 (got {getattr(a, opt)})")
    if not 0 <= a.warmup_frac < 1:
        p.error(f"--warmup-frac must be in [0, 1) (got {a.warmup_frac})")
    if any("=" not in kv for kv in a.env):
        p.error(f"--env takes K=V (got {[kv for kv in a.env if '=' not in kv]})")
    env = dict(kv.split("=", 1) for kv in a.env)
    from hylorada_serve.demo import prepare

    base, spare = prepare(ROOT / ".cache" / "hylorada-bench-hotswap")
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    adapters = work / "adapters"
    adapters.mkdir()
    for n in DEMO:
        shutil.copytree(spare / n, adapters / n)
    shutil.copytree(spare / "demo-lora", adapters / SWAP)
    probe_dir = work / "memprobe"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("soak: SIGTERM"))   # a bounded run stops its server too
    proc, url = start(base, adapters, work / "server.log", a,
                      soak_mem.probe_env(env, probe_dir) if a.memprobe else env)
    soak = Soak(url, adapters, spare, a)
    samples, code, left = [], None, -1
    try:
        with httpx.Client(base_url=url, headers=soak.h, timeout=120) as http:
            for m in ["tiny-llama", *DEMO]:
                soak.baseline[m] = soak.greedy(http, m).json()["choices"][0]["token_ids"]
            soak.t0 = time.time()
            threads = [threading.Thread(target=soak.worker, args=(a.seed + i,), daemon=True) for i in range(a.workers)]
            if not a.upstream:
                threads += [threading.Thread(target=soak.swapper, daemon=True),
                            threading.Thread(target=soak.dropper, daemon=True)]
            for t in threads:
                t.start()
            end = soak.t0 + a.minutes * 60
            while time.time() < end and proc.poll() is None:
                rss, nproc, by = report.session_rss_mb(proc.pid)
                with soak.lock:
                    done = sum(soak.outcomes.values())
                    bad = sum(v for k, v in soak.outcomes.items() if k.endswith("UNEXPECTED"))
                samples.append({"t": round(time.time() - soak.t0, 1), "rss_mb": round(rss, 1), "processes": nproc, "by_process": by,
                                "requests": done, "unexpected": bad})
                time.sleep(min(a.sample_every, max(0.0, end - time.time())))
            soak.stop.set()
            for t in threads:
                t.join(timeout=120)
            health = http.get("/health").status_code
            adm = {} if a.upstream else soak.status(http)
            served = {m: soak.greedy(http, m).json()["choices"][0]["token_ids"] for m in ["tiny-llama", *DEMO, SWAP]}
            if a.memprobe:                  # each process: RSS before/after one malloc_trim(0)
                (probe_dir / "trim").touch()
                time.sleep(4)
    finally:
        code, left = stop_server(proc)
    dirs = {"tiny-llama": None, **{m: spare / m for m in DEMO}, SWAP: spare / soak.swap_src}
    if a.upstream:                          # stock vLLM serves every folder as plain LoRA: only consistency counts
        correct = {m: served[m] == (soak.baseline.get(m) or soak.baseline["demo-lora"]) for m in dirs}
    else:
        ref = report.reference_tokens(base, dirs, PROMPT, N_NEW)
        correct = {m: served[m] == ref[m] for m in dirs}
    warm = a.warmup_frac * a.minutes * 60
    slope = report.slope_mb_per_min(samples, warm)
    grow = report.growth(samples, warm, windows=max(3, round(a.minutes * (1 - a.warmup_frac) / a.window_minutes)))
    probe = soak_mem.summarise(probe_dir, soak.t0, warm, samples) if a.memprobe else None
    unexpected = sum(v for k, v in soak.outcomes.items() if k.endswith("UNEXPECTED"))
    out = {"bench": "soak", "minutes": a.minutes, "workers": a.workers, "requests": sum(soak.outcomes.values()),
           "unexpected_errors": unexpected, "outcomes": dict(sorted(soak.outcomes.items())),
           "unexpected_first": soak.unexpected, "rss": slope, "growth": grow, "memprobe": probe,
           "server": "upstream vLLM" if a.upstream else "hylorada-serve", "server_env": env,
           "warmup_s": warm, "samples": samples,
           "swaps": soak.swaps, "swaps_ok": sum(s["ok"] for s in soak.swaps), "bad_dropped": len(soak.bad_log),
           "bad_refused": sum(b["refused"] for b in soak.bad_log), "bad_log": soak.bad_log,
           "adapters_listed_at_end": sorted(adm), "health_at_end": health, "correct_vs_reference": correct,
           "all_correct": all(correct.values()), "sigterm_exit_code": code, "processes_left": left,
           "load_average": os.getloadavg(), "command": " ".join(["python bench/soak.py", *(argv or sys.argv[1:])])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(out, indent=1) + "\n")
    label = out["server"] + "".join(f" {k}={v}" for k, v in env.items())
    report.plot(samples, warm, slope, Path(a.out + ".png"),
                f"{label} soak: {a.minutes:g} min, {out['requests']} requests, {unexpected} unexpected", probe)
    shutil.rmtree(work, ignore_errors=True)
    summary = {k: out[k] for k in ("minutes", "requests", "unexpected_errors", "swaps_ok", "bad_dropped", "bad_refused",
                                   "all_correct", "sigterm_exit_code", "processes_left")}
    summary["rss_slope_mb_per_min"] = slope.get("slope_mb_per_min")
    summary["rss_last_mb"] = slope.get("rss_last_mb")
    summary["rss_mb_per_1000_requests"] = grow.get("total", {}).get("mb_per_1000_requests")
    print(json.dumps(summary))
    ok = unexpected == 0 and out["all_correct"] and (a.upstream or code == 0) and len(soak.swaps) == out["swaps_ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
