"""The benchmark's report: the table it prints and the latency plot it writes."""
from __future__ import annotations

from pathlib import Path

from benchmarks.load import PEER


def print_table(results: dict) -> None:
    if results["runs"]:
        print(f"\n{'setting':<28} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'errors':>6}")
    for run in results["runs"]:
        latency = run["latency_us"]
        print(f"{run['name']:<28} {run['requests_per_s']:>8.0f} {run['images_per_s']:>9.0f} "
              f"{latency['p50'] / 1e3:>7.2f} {latency['p90'] / 1e3:>7.2f} {latency['p99'] / 1e3:>7.2f} "
              f"{run['error_count']:>6}")
    split = next((run["split_ms"] for run in results["runs"] if run.get("split_ms")), None)
    if split:
        print(f"\na lone request (concurrency 1), mean ms from TorchServe's counters: client {split['client']:.2f} = "
              f"to the frontend and back {split['client_to_frontend']:.2f} + frontend {split['frontend']:.2f} "
              f"(queue {split['queue']:.2f} + handler {split['handler']:.2f} + TorchServe's hop "
              f"{split['torchserve_hop']:.2f}); {split['requests_per_batch']:.2f} requests per batch")
    peer = results.get("peer")
    if peer:
        print(f"\nthe peer ({peer['server']}), and TorchServe / peer:")
        print(f"{'setting':<28} {'req/s':>8} {'images/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}"
              f" {'x req/s':>8} {'x p50':>6} {'x p99':>6}")
        for ours in results["runs"]:
            theirs = peer_run(peer, ours)
            if theirs is None:
                continue
            latency, mine = theirs["latency_us"], ours["latency_us"]
            print(f"{ours['name'] if ours.get('model') else theirs['name']:<28} "
                  f"{theirs['requests_per_s']:>8.0f} {theirs['images_per_s']:>9.0f} "
                  f"{latency['p50'] / 1e3:>7.2f} {latency['p99'] / 1e3:>7.2f} {theirs['error_count']:>6} "
                  f"{ours['requests_per_s'] / theirs['requests_per_s']:>8.2f} "
                  f"{mine['p50'] / latency['p50']:>6.2f} {mine['p99'] / latency['p99']:>6.2f}")
    lone = results.get("sporadic") or {}
    if lone:
        theirs = lone.get(PEER)
        gap = next(iter(lone.values()))["gap_s"]
        print(f"\na lone request every {gap * 1e3:.0f} ms, to each in turn (keep-alive, idle in between), "
              f"p50 / p99 ms" + (" and / the peer's:" if theirs else ":"))
        for name, measured in lone.items():
            latency = measured["latency_us"]
            ratio = (f"   x{latency['p50'] / theirs['latency_us']['p50']:.2f} / "
                     f"x{latency['p99'] / theirs['latency_us']['p99']:.2f}" if theirs and name != PEER else "")
            print(f"  {name:<16} {latency['p50'] / 1e3:6.2f} / {latency['p99'] / 1e3:6.2f}{ratio}")
    raw = results["raw"]
    if raw:
        print(f"\nraw in-process ceiling: {raw['images_per_s']:.0f} images/s (batch {raw['batch']}, "
              f"{raw['processes']} processes x {raw['threads']} thread)")
        print(f"preprocessing per image: PNG {raw['preprocessing']['png_us']:.0f} us alone, "
              f"{raw['preprocessing']['png_batch16_us']:.0f} us in a batch of 16, "
              f".npy frame {raw['preprocessing']['npy_frame_us']:.0f} us")
        multi = [run for run in results["runs"] if run["images_per_request"] > 1]
        if multi:
            print(f"multi-image requests: {multi[0]['images_per_s']:.0f} images/s = "
                  f"{multi[0]['images_per_s'] / raw['images_per_s']:.0%} of the raw ceiling")
    overloaded = results.get("overload")
    if overloaded:
        print(f"\noverload: concurrency {overloaded['concurrency']} for {overloaded['seconds']:.0f} s, "
              f"{overloaded['requests_per_s']:.0f} req/s: {overloaded['answered_200']} answered 200, "
              f"{overloaded['answered_503']} 503 (queue full), {overloaded['other_status']} other status, "
              f"{overloaded['socket_errors']} socket errors, {overloaded['timeouts']} timeouts; "
              f"p50 {overloaded['p50_us'] / 1e3:.1f} ms, p99 {overloaded['p99_us'] / 1e3:.0f} ms, "
              f"max {overloaded['max_latency_us'] / 1e3:.0f} ms; {overloaded['worker_restarts']} worker restarts")
    soaked = results["soak"]
    if soaked:
        print(f"\nsoak: {soaked['requests']} requests at concurrency {soaked['concurrency']} "
              f"in {soaked['seconds']:.0f} s "
              f"({soaked['requests_per_s']:.0f} req/s, p99 {soaked['p99_us'] / 1e3:.1f} ms, "
              f"max {soaked['max_latency_us'] / 1e3:.0f} ms): {soaked['errors']} errors, "
              f"{soaked['wrong_answers']} wrong answers")
        print(f"  RSS after the soak's first {soaked['rss_before_after_requests']} requests -> at its end:")
        for name, before in soaked["rss_before_mib"].items():
            after = soaked["rss_after_mib"].get(name, float("nan"))
            print(f"  RSS {name:<14} {before:7.1f} -> {after:7.1f} MiB ({(after - before) / before:+.1%})")
    recovered = results["recovery"]
    if recovered:
        print(f"\nkill -9 of a worker under load (concurrency {recovered['concurrency']}), {recovered['kills']} times: "
              f"replaced after median {recovered['median_s']:.1f} s, max {recovered['max_s']:.1f} s; "
              f"{recovered['failed_requests']} requests failed "
              f"({', '.join(f'{kind} {count}' for kind, count in recovered['failures_by_kind'].items() if count)}); "
              f"slowest answer {recovered['max_latency_us'] / 1e3:.0f} ms")
    memory = results["memory"]
    print()
    for name, before in memory["after_warmup_mib"].items():
        after = memory["at_end_mib"].get(name, float("nan"))
        print(f"RSS {name:<14} {before:7.1f} MiB after warm-up, {after:7.1f} MiB after "
              f"{memory['requests']} requests ({(after - before) / before:+.1%})")
    print_targets(results)
    if results["profile_worker_at_c64"]:
        print("\none worker at concurrency 64 (py-spy, share of samples inside each function):")
        for entry in results["profile_worker_at_c64"][:18]:
            print(f"  {entry['share']:6.1%}  {entry['function']}")


def peer_run(peer: dict, ours: dict) -> dict | None:
    """The peer's run with the same concurrency and images per request as `ours` (the peer has one model: the
    run on the model for lone requests is paired with its concurrency-1 run)."""
    return next((run for run in peer["runs"] if run["concurrency"] == ours["concurrency"]
                 and run["images_per_request"] == ours["images_per_request"]), None)


# The serving targets, as measured by one run: (label, value of this run or None, the bound, "max" or "min").
def targets(results: dict) -> list[tuple[str, float | None, float, str]]:
    runs, peer, raw, soaked = results["runs"], results.get("peer"), results.get("raw"), results.get("soak")
    single = {run["concurrency"]: run for run in runs if run["images_per_request"] == 1 and not run.get("model")}
    lone = next((run for run in runs if run.get("model")), None)

    def p50_ratio(run):
        theirs = peer_run(peer, run) if peer and run else None
        return run["latency_us"]["p50"] / theirs["latency_us"]["p50"] if theirs else None

    c64 = single.get(64)
    peer64 = peer_run(peer, c64) if peer and c64 else None
    npy = next((run for run in runs if run["images_per_request"] > 1), None)
    memory = None
    if soaked:
        memory = max(abs(soaked["rss_after_mib"][name] - before) / before
                     for name, before in soaked["rss_before_mib"].items() if name in soaked["rss_after_mib"])
    rows = [("c=1 p50 / the peer's, batched model", p50_ratio(single.get(1)), 2.0, "max")]
    if lone:
        rows.append((f"c=1 p50 / the peer's, {lone['model']}", p50_ratio(lone), 2.0, "max"))
    rows += [
        ("c=64 req/s / the peer's", c64["requests_per_s"] / peer64["requests_per_s"] if peer64 else None, 5.0, "min"),
        ("c=64 p99 / p50", c64["latency_us"]["p99"] / c64["latency_us"]["p50"] if c64 else None, 1.6, "max"),
        (".npy images/s / raw ceiling", npy["images_per_s"] / raw["images_per_s"] if npy and raw else None, 0.7,
         "min"),
        (f"RSS change over the soak ({soaked['requests'] if soaked else 0} requests), largest of the processes",
         memory, 0.10, "max"),
    ]
    return rows


def print_targets(results: dict) -> None:
    rows = [row for row in targets(results) if row[1] is not None]
    if not rows:
        return
    print("\nthe serving targets, this run:")
    for label, value, bound, kind in rows:
        met = value <= bound if kind == "max" else value >= bound
        print(f"  {label:<72} {value:6.2f}  ({'<=' if kind == 'max' else '>='} {bound:g}: "
              f"{'met' if met else 'NOT met'})")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    peer = results.get("peer")
    for who, all_runs, colour in (("TorchServe", results["runs"], "tab:blue"),
                                  ("FastAPI peer", peer["runs"] if peer else [], "tab:orange")):
        runs = [run for run in all_runs if run["images_per_request"] == 1 and not run.get("model")]
        if not runs:
            continue
        for key, style in (("p50", "o-"), ("p99", "^:")):
            axis.plot([run["requests_per_s"] for run in runs], [run["latency_us"][key] / 1e3 for run in runs], style,
                      color=colour, label=f"{who} {key}")
        for run in runs:
            axis.annotate(f"c={run['concurrency']}", (run["requests_per_s"], run["latency_us"]["p99"] / 1e3),
                          textcoords="offset points", xytext=(4, 4), fontsize=8, color=colour)
    for run in (run for run in results["runs"] if run.get("model")):  # the model for lone requests: one point
        axis.plot([run["requests_per_s"]], [run["latency_us"]["p50"] / 1e3], "*", color="tab:green", markersize=10,
                  label=f"{run['model']} p50 (c=1)")
    axis.set_xlabel("throughput (requests/s)")
    axis.set_ylabel("latency (ms)")
    axis.set_yscale("log")
    axis.set_title("single-image PNG requests, 2 workers each")
    axis.legend()
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
