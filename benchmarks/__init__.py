"""Benchmark the bundle: TorchServe under load from wrk, against the raw in-process ceiling of the same model.

    python -m benchmarks                     # full run (minutes; its soak ~4 min here): docs/performance.md's tables
    python -m benchmarks --quick             # under a minute: proves the benchmark works
    python -m benchmarks --only soak         # only the soak: >= 500,000 checked requests at concurrency 32
    python -m benchmarks --only recovery     # only the kill -9 recovery measurement
    python -m benchmarks --url http://127.0.0.1:8080 --key-file key_file.json   # a running server

It starts its own TorchServe (free ports, own temp dir, token auth on, serving.launch) from
model_store/digits.mar unless --url is given, and measures with wrk (Debian's package; `make bench` installs it),
one thread, keep-alive connections, on this same machine:

  * single-image PNG requests at concurrency 1, 16 and 64: requests/s, p50/p90/p99 latency, errors;
  * the model for lone requests (digits-latency: batch 1, one worker) when --latency-archive exists (`make bench`
    builds it), served beside digits: the same answer first, then concurrency 1;
  * a lone request now and then: single requests 50 ms apart to each model and to the peer in turn, on their own
    keep-alive connections (wrk's concurrency 1 sends back to back, the page one request per stroke);
  * multi-image requests (a .npy of 64 frames per request): images/s;
  * the raw in-process ceiling: the worker's model (same TorchScript optimisation, same torch threads), batched
    forward at batch 64, in as many processes as TorchServe has workers; and the per-image preprocessing cost;
  * a soak: at least 500,000 single-image requests at concurrency 32 (quick: 2,000), every answer checked (200 and
    the right digit); errors, wrong answers and the RSS of every process after its first 50,000 requests (the
    frontend's JVM sizes its heap over about that many after a start) and at its end;
  * worker and frontend RSS after warm-up and at the end (the full run sends >= 100,000 requests first);
  * recovery: kill -9 one worker under load (wrk at concurrency 8), 5 times (quick: once): seconds until TorchServe
    has replaced it (describe shows every worker READY again), and the requests that failed meanwhile. Only with
    the benchmark's own server: it never kills the workers of a server given with --url;
  * overload: concurrency 256 for 30 s (quick: 3 s), more than TorchServe queues: how many answers were 200 and how
    many 503 (queue full), anything else (other status, socket errors, timeouts), p99, and worker restarts;
  * where a lone request's time goes (concurrency 1), from TorchServe's own counters: queue, handler, and the rest
    of the frontend's time (TorchServe's frontend -> worker hop);
  * the peer (unless --no-peer): a plain FastAPI + uvicorn server over the same .mar's model and the same
    preprocessing (benchmarks/peer: 2 worker processes, batch 1, one torch thread each, a bearer-token check),
    measured right after TorchServe's load settings with the same wrk settings; the table puts the ratio
    TorchServe / peer beside every figure. TorchServe stays up, idle, while the peer runs.

With --profile it also samples one worker with py-spy during the concurrency-64 run and reports where its time
goes (the share of samples inside each function): docs/performance.md's "Where the time goes" comes from there.

The parts: inputs.py (the digits sent), load.py (wrk: load settings, soak, overload, recovery), counters.py
(TorchServe's own counters, the latency split, RSS), ceiling.py (the raw in-process ceiling, preprocessing cost),
profile.py (py-spy), report.py (table and plot), peer/ (the FastAPI peer and its process); ab.py (this checkout's
serving against an older commit's, round by round: `python -m benchmarks.ab --against HEAD~1`).

It prints a table, the serving targets with this run's figures, and writes results.json and latency.png into
--output-dir (default artifacts/bench/).
Timing numbers from a 2-core machine are noisy: compare medians of several runs, not single numbers.
"""
