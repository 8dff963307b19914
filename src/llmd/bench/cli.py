"""`llmd bench`: the routing benchmark (`make bench`). `--smoke` is the CI run (< ~30 s)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path("benchmarks/routing/results")


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 2,4,8; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers; got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    return [int(v) for v in _floats(text)]


def _names(text: str) -> list[str]:
    from llmd.bench.live import ROUTERS

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ROUTERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown router {bad[0]!r}; one of {', '.join(ROUTERS)}")
    return names


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="the routing benchmark: round-robin vs our EPP vs vllm-router on llmd-sim engines",
        description="Replays a seeded shared-prefix multi-turn chat trace at several Poisson "
        "rates through each router in front of the same llmd-sim engines, then runs the same "
        "policies in vllm-sim's discrete-event mode at 64 and 256 engines. Writes results.json, "
        "results.md and PNG plots to --out.",
    )
    p.add_argument("--smoke", action="store_true", help="a tiny run for CI (< ~30 s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (%(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="do not run epp-precise once more at twice round-robin's anchor rate when its "
        "throughput at equal P90 is only a lower bound (on by default; off with --smoke)",
    )
    live = p.add_argument_group("live run")
    live.add_argument("--engines", type=int, default=4, help="llmd-sim processes (4)")
    live.add_argument("--rates", type=_floats, help="requests/s, model time (4,8,16,24)")
    live.add_argument(
        "--routers",
        type=_names,
        help="comma-separated subset of the routers (the discrete-event mode takes it too)",
    )
    live.add_argument(
        "--time-scale", type=float, default=1.0, help="the sims' --time-scale (1: real GPU time)"
    )
    live.add_argument("--latency-profile", help="latency profile JSON (default: the sim's)")
    live.add_argument(
        "--kv-blocks",
        type=int,
        default=8192,
        help="GPU KV blocks per engine (16 tokens each; 8192 = 16 GiB of Llama-3.1-8B KV)",
    )
    live.add_argument(
        "--epp-response-body",
        choices=["FULL_DUPLEX_STREAMED", "NONE"],
        default="FULL_DUPLEX_STREAMED",
        help="the EPP's ext_proc response body mode in the dev gateway: FULL_DUPLEX_STREAMED "
        "(the Inference Extension's, default) or NONE (request path only)",
    )
    live.add_argument(
        "--driver",
        choices=["builtin", "inference-perf"],
        default="builtin",
        help="the load: the bench's client replaying its seeded trace (builtin, default), or "
        "inference-perf's shared-prefix generator at the same shape and rates",
    )
    live.add_argument(
        "--inference-perf",
        metavar="PATH",
        help="the inference-perf program (default: `inference-perf` on PATH; it needs Python 3.12)",
    )
    live.add_argument("--no-live", action="store_true", help="only the discrete-event mode")
    work = p.add_argument_group("workload")
    work.add_argument("--groups", type=int, default=32, help="system prompts (32)")
    work.add_argument("--users", type=int, default=4, help="users (conversations) per group (4)")
    work.add_argument("--turns", type=int, default=3, help="turns per conversation (3)")
    work.add_argument("--system-words", type=int, default=2000)
    work.add_argument("--output-tokens", type=int, default=64)
    des = p.add_argument_group("discrete-event mode")
    des.add_argument("--des-engines", type=_ints, default=[64, 256], help="(64,256)")
    des.add_argument(
        "--des-rates-per-engine", type=_floats, default=[1.0, 2.0, 4.0], help="(1,2,4)"
    )
    des.add_argument("--no-des", action="store_true")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("llmd bench: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from llmd.bench import des as des_mode
    from llmd.bench import report
    from llmd.bench.inference_perf import InferencePerfDriver, InferencePerfError, find_executable
    from llmd.bench.live import MODEL, ROUTERS, EngineOptions, run_live_sync
    from llmd.bench.workload import WorkloadSpec, build_trace
    from llmd.local.logs import LogSink
    from llmd.local.supervisor import StartError

    if args.smoke:
        spec = WorkloadSpec(
            seed=args.seed, groups=2, users_per_group=2, turns=2, system_words=200,
            question_words=20, answer_words=20, output_tokens=8, think_time_s=0.5,
        )  # fmt: skip
        opts = EngineOptions(engines=2, time_scale=0.2, num_gpu_blocks=2048)
        rates = args.rates or [4.0]
        routers = args.routers or ["round-robin", "epp-default", "epp-precise"]
        des_opts = des_mode.DesOptions(
            engines=[8], rates_per_engine=[2.0], base=spec, base_engines=2, num_gpu_blocks=2048
        )
        args.no_probe = True
    else:
        spec = WorkloadSpec(
            seed=args.seed,
            groups=args.groups,
            users_per_group=args.users,
            turns=args.turns,
            system_words=args.system_words,
            output_tokens=args.output_tokens,
        )
        opts = EngineOptions(
            engines=args.engines,
            time_scale=args.time_scale,
            latency_profile=args.latency_profile,
            num_gpu_blocks=args.kv_blocks,
            epp_response_body=args.epp_response_body,
        )
        rates = args.rates or [4.0, 8.0, 16.0, 24.0]
        routers = args.routers or list(ROUTERS)
        des_opts = des_mode.DesOptions(
            engines=args.des_engines,
            rates_per_engine=args.des_rates_per_engine,
            base=spec,
            base_engines=args.engines,
            num_gpu_blocks=args.kv_blocks,
            latency_profile=args.latency_profile,
        )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.time()
    doc: dict[str, Any] = {
        "benchmark": "routing",
        "smoke": args.smoke,
        "workload": _spec_dict(spec),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": " ".join(["llmd", "bench", *sys.argv[2:]])
        if sys.argv[1:2] == ["bench"]
        else " ".join(sys.argv),
        "machine": _machine(),
    }
    if not args.no_live:
        driver = None
        if args.driver == "inference-perf":
            try:
                driver = InferencePerfDriver(
                    find_executable(args.inference_perf),
                    spec,
                    model=MODEL,
                    time_scale=opts.time_scale,
                )
            except InferencePerfError as exc:
                print(f"llmd bench: {exc}", file=sys.stderr)
                return 2
        log(
            f"live: {opts.engines} engines, routers {', '.join(routers)}, rates {rates}, "
            f"load from {args.driver}"
        )
        sink = LogSink(sys.stderr, fmt="console", level="warning")
        try:
            cells, skipped = run_live_sync(
                opts, routers, rates, lambda r: build_trace(spec, r), sink, log=log, driver=driver
            )
        except (StartError, InferencePerfError) as exc:
            print(f"llmd bench: {exc}", file=sys.stderr)
            return 1
        report.mark_completion(cells)
        extra = None if args.no_probe else report.probe_rate(report.targets(cells))
        if extra is not None and report.OURS in routers and extra not in rates:
            log(f"live: {report.OURS} once more at {extra:g} req/s (the throughput probe)")
            try:
                more, _ = run_live_sync(
                    opts,
                    [report.OURS],
                    [extra],
                    lambda r: build_trace(spec, r),
                    sink,
                    log=log,
                    driver=driver,
                )
            except (StartError, InferencePerfError) as exc:
                print(f"llmd bench: {exc}", file=sys.stderr)
                return 1
            cells += [{**c, "probe": True} for c in more]
            report.mark_completion(cells)
        doc["live"] = {
            "options": {
                "engines": opts.engines,
                "time_scale": opts.time_scale,
                "kv_blocks_per_engine": opts.num_gpu_blocks,
                "latency_profile": opts.latency_profile or "llmd-sim default",
                "epp_response_body": opts.epp_response_body,
                "driver": args.driver,
                "rates": rates,
                "routers": routers,
            },
            "cells": cells,
            "skipped": skipped,
            "targets": report.targets(cells),
        }
    if not args.no_des:
        why = des_mode.des_available()
        if why:
            doc["des"] = {"skipped": why}
            log(f"discrete-event mode skipped: {why}")
        else:
            log(f"discrete-event mode: engines {list(des_opts.engines)}")
            doc["des"] = {
                "options": {
                    "engines": list(des_opts.engines),
                    "rates_per_engine": list(des_opts.rates_per_engine),
                    "kv_blocks_per_engine": des_opts.num_gpu_blocks,
                },
                "rows": des_mode.run_des(des_opts, des_routers(args.routers), log=log),
            }
            if not args.no_probe:
                doc["des"]["rows"] += _des_probes(des_opts, doc["des"]["rows"], log)
            doc["des"]["targets"] = {
                str(n): report.targets(cells)
                for n, cells in report.des_cells(doc["des"]["rows"]).items()
            }
    doc["wall_s"] = time.time() - started
    doc["machine"]["load_avg_end"] = _load_avg()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "results.json", doc)
    md = report.markdown(doc)
    (out / "results.md").write_text(md)
    rate = ((doc.get("live") or {}).get("targets") or {}).get("rate_rps")
    samples = {
        c["router"]: c.get("ttft_s", [])
        for c in (doc.get("live") or {}).get("cells", [])
        if rate is None or c["rate_rps"] == rate
    }
    pngs = report.plots(doc, out, samples)
    print(md)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + "".join(f", {p}" for p in pngs))
    return 0


def _des_probes(
    des_opts: Any, rows: list[dict[str, Any]], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """epp-precise at twice round-robin's anchor rate, per engine count whose throughput
    reading is only a lower bound short of the target (`report.probe_rate`)."""
    from dataclasses import replace

    from llmd.bench import des as des_mode
    from llmd.bench import report

    out: list[dict[str, Any]] = []
    for n, cells in report.des_cells(rows).items():
        extra = report.probe_rate(report.targets(cells))
        if extra is None or any(c["rate_rps"] == extra for c in cells):
            continue
        log(f"discrete-event mode: {report.OURS} at {extra:g} req/s, {n} engines (the probe)")
        probe = replace(des_opts, engines=[n], rates_per_engine=[extra / n])
        out += [{**r, "probe": True} for r in des_mode.run_des(probe, [report.OURS], log=log)]
    return out


def des_routers(chosen: list[str] | None) -> list[str]:
    """The discrete-event routers, narrowed by `--routers` (vllm-router-cache is its model)."""
    from llmd.bench import des as des_mode

    if not chosen:
        return list(des_mode.DES_ROUTERS)
    return [r for r in des_mode.DES_ROUTERS if r.split(" ")[0] in chosen]


def _spec_dict(spec: Any) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


def _load_avg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _machine() -> dict[str, Any]:
    """What the live numbers depend on: CPUs and how busy they already were."""
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_start": _load_avg(),
    }
