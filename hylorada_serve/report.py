"""What hylorada-serve prints once at start-up: the adapters found in DIR/ (serving / refused, with reasons) and the
ready banner with a copy-paste request. Strings only; nothing here changes the server."""
from __future__ import annotations

from .store import AdapterStore


MAX_LINES = 40                      # folders listed one per line at start-up; the rest: GET /v1/adapters
MAX_NAMES = 8                       # adapter names in the ready banner


def report_adapters(store: AdapterStore, pending: int = 0) -> None:
    """One summary line, then one line per folder (at most MAX_LINES): kind, rank and size, or the status and
    reason; folders not serving first. pending: folders still being validated in the background."""
    rows = store.status()
    later = f", {pending} still being validated (requests for them wait)" if pending else ""
    print(f"adapters in {store.root}: {sum(r['status'] == 'ready' for r in rows)} serving, "
          f"{sum(r['status'] == 'refused' for r in rows)} refused{later}", flush=True)
    if len(rows) > MAX_LINES:
        print(f"  ({MAX_LINES} of {len(rows)} folders, those not serving first; every one: GET /v1/adapters)",
              flush=True)
    for r in sorted(rows, key=lambda r: r["status"] == "ready")[:MAX_LINES]:
        if r["status"] == "ready":
            print(f"  ok       {r['name']:<24} kind={r['kind']:<9} rank={r['rank']:<4} "
                  f"size={r['size_bytes'] / 1024:.1f} KiB", flush=True)
        else:
            print(f"  {r['status']:<8} {r['name']:<24} {r['reason']}", flush=True)


def banner(url: str, base_name: str, store: AdapterStore, keyed: bool,
           question: str = "What is the capital of France?") -> str:
    """The ready line and example requests: the same chat question to the base and to every adapter (a loop over
    `model` with the openai client), and one curl."""
    every = sorted(store.serving())
    names = every[:MAX_NAMES]
    model = names[0] if names else base_name
    key = ' -H "Authorization: Bearer $HYLORADA_API_KEY"' if keyed else ""
    models = ", ".join(f'"{m}"' for m in [base_name, *names])
    more = f" and {len(every) - len(names)} more" if len(every) > len(names) else ""
    return f"""
hylorada-serve ready on {url}   (base model: "{base_name}"; adapters: {", ".join(names) or "none"}{more})

  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{key} \\
       -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "{question}"}}], "max_tokens": 96, "temperature": 0}}'

  python -c 'from openai import OpenAI; c = OpenAI(base_url="{url}/v1", api_key="{'KEY' if keyed else 'none'}")
for m in [{models}]:
    r = c.chat.completions.create(model=m, messages=[{{"role": "user", "content": "{question}"}}], max_tokens=96, temperature=0)
    print(m, "->", repr(r.choices[0].message.content))'

  adapters: curl {url}/v1/adapters   (drop a new folder into {store.root} to add one)
"""
