"""hylorada-serve: one base model and every adapter folder in DIR/ over the OpenAI API, on vLLM.

cli.py (entry point) · store.py (vLLM-free hot-swap bookkeeping) · publish.py (private copy + validation) ·
watcher.py (polling loop) · models.py (vLLM's OpenAIServingModels fed from the store) · app.py (auth, admission,
admin routes) · metrics.py · demo.py. See docs/serving.md.
"""
