"""hylorada-serve: one base model and every adapter folder in DIR/ over the OpenAI API, on vLLM.

cli.py (argv → ServeConfig) · config.py (ServeConfig: every option, validated) · launch.py (engine, vLLM's app, serve
loop, shutdown) · report.py (start-up report) · store.py (vLLM-free hot-swap bookkeeping) · publish.py (private copy
+ validation) · watcher.py (polling loop) · models.py (vLLM's OpenAIServingModels fed from the store, admission) ·
app.py (body limit, auth, admission, admin routes) · metrics.py · gc_heap.py · demo.py. See docs/serving.md.
"""
