#!/bin/bash
# The ablation behind smallplan_and_nap.json, as it was run at 20:28 UTC (commit f176a86 checked out in /work/main):
# old code (bf4fd05), new code with vLLM's own spin (HYLORADA_MQ_NAP_US=0), new code with patches/mq_wait's nap —
# all three hylorada-serve up at once, 4 interleaved rounds. Before running:
#   git worktree add /tmp/old bf4fd05 && ln -s /tmp/old/patches /tmp/old/hylorada_patches
# (PYTHONPATH=/tmp/old makes the server and its engine processes import the old hylorada, hylorada_serve and
# hylorada_patches; the servers start from /tmp so /work/main is not on sys.path first).
# patches/mq_wait was reverted after this run (76f0216): today's code is the "spin" server.
cd /tmp
M=/work/main
export VLLM_HOST_IP=127.0.0.1
ARGS="--base $M/.cache/bench/small-llama --adapters $M/.cache/bench/compare/dirs/hylorada --served-model-name base --max-loras 8 --max-cpu-loras 8 --max-lora-rank 16 --dtype float32 --max-model-len 512 --max-num-seqs 16 --kv-cache-memory-bytes 1073741824"
PIDS=()
start() { # name port env...
  local name=$1 port=$2; shift 2
  env "$@" setsid $M/.venv/bin/hylorada-serve $ARGS --port $port > /tmp/q/abl/server_$name.log 2>&1 &
  PIDS+=($!)
  for i in $(seq 1 180); do curl -sf http://127.0.0.1:$port/health >/dev/null && return 0; sleep 1; done
  echo "$name not ready"; return 1
}
cleanup() { for p in "${PIDS[@]}"; do kill -- -$p 2>/dev/null; done; sleep 5; for p in "${PIDS[@]}"; do kill -9 -- -$p 2>/dev/null; done; }
trap cleanup EXIT
start old 8781 PYTHONPATH=/tmp/old || exit 1
start spin 8782 HYLORADA_MQ_NAP_US=0 || exit 1
start new 8783 X=1 || exit 1
order=(old spin new)
declare -A PORT=([old]=8781 [spin]=8782 [new]=8783)
for rep in 0 1 2 3; do
  if (( rep % 2 )); then seq=(new spin old); else seq=(old spin new); fi
  for s in "${seq[@]}"; do
    sleep 2
    (cd $M && .venv/bin/python -m bench.serve --url http://127.0.0.1:${PORT[$s]} --adapter-prefix a --num-adapters 8 --alpha 0 --rate inf --prompt-len 48,48 --output-len 48,48 --num-requests 96 --max-concurrency 16 --seed 0 --warmup 8 --no-progress --label ${s}_$rep --out-dir /tmp/q/abl 2>/dev/null) | tail -1 | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('$s', $rep, round(d['overall']['output_tok_per_s'],1))"
  done
done
