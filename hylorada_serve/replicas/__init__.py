"""Past one machine: `hylorada-serve --replicas N [--ray-address ADDR]` runs N hylorada-serve replicas on Ray Serve
behind one endpoint (docs/scale.md). Ray is an optional extra (`pip install 'hylorada[ray]'`); nothing here is
imported by the single server.

    client -> the front (front.py, --host/--port) -> Ingress (ingress.py: `model` read from the body) -> Replica
    chosen by Serve's model multiplexing (replica.py: one that already holds that adapter, else the least loaded,
    which then holds it) -> that replica's own hylorada-serve on 127.0.0.1 (its engine, store, watcher, keys) ->
    the answer streamed back with x-hylorada-replica. /metrics, GET /v1/replicas and the admin routes that change
    adapters go to every replica (registry.py), their answers combined (merge.py).
"""
