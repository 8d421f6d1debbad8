"""Host time per step and per token of an emulated worker under load, on this machine.

Usage: ``python bench/host_time.py --profile profiles/h200-bench-8b.json [--rate R]
[--duration S] [--burst N] [--charge-host]``, or ``python bench/host_time.py --engine-only``.

It serves ``carpool worker --emulate PROFILE`` in this process (the worker's own app, engine and
scheduler; only the GPU sleeps), drives it with ``carpool_bench.replay`` from a second process
(streaming clients, the code trace's token mix), and prints one JSON line per phase:

- ``engine_cpu_per_step_us`` / ``engine_cpu_per_token_us``: the engine thread's CPU time
  (``time.pthread_getcpuclockid``, so the clients on the same cores do not count), less what it
  spent inside the emulated runner (working out a step's profiled time), over the steps it ran
  and the tokens it sent; ``engine_kernel_share``: the part of it spent in the kernel;
- ``engine_gap_per_step_us``: wall time from the end of one step's ``execute`` to the start of
  the next, over steps that followed another at once (no idle wait): what a real GPU idles per
  step while the host works (the CPU above plus waits for the GIL);
- ``loop_cpu_per_token_us``: the event loop thread's CPU (HTTP, SSE, detokenizing) per token;
- ``requests_per_second``, ``tokens_per_second``: completed requests and their generated
  tokens over the makespan, measured and simulated.

``--engine-only`` runs the engine alone, by hand, with a runner that takes no time: 64 requests
decoding, one endpoint, with sinks that drop the events (plain callables; hub sinks whose hub
drops each step's batch), then with the HTTP layer's sinks, which put them on queues of an event
loop in another thread; it prints the engine's CPU per step and per token.

The emulated GPU forgives the host's delay in launching a step (``emulated.py``), so host time
hides behind step time there; ``--charge-host`` starts each step when the host launches it, as
a GPU worker that waits for the host between steps does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

PHASE = """
import json, sys
from pathlib import Path
import numpy as np
from carpool_bench import fidelity
from carpool_replica.profile import Profile
from carpool_sim.trace import Request, load_azure_csv, poisson_mix
url, profile_path, rate, duration, count, shape, seed = sys.argv[1:8]
profile = Profile.from_dict(json.loads(open(profile_path).read()))
trace = load_azure_csv(Path("traces/azure-llm-2023-code.csv"), fidelity.ENDPOINT)
rng = np.random.default_rng(int(seed))
if float(rate) > 0:
    requests = poisson_mix(trace, float(rate), float(duration), rng, 8000)
elif shape:
    prompt, output = (int(n) for n in shape.split("x"))
    requests = [Request(fidelity.ENDPOINT, 0.0, prompt, output) for _ in range(int(count))]
else:
    requests = fidelity.burst(trace, int(count), 8000, rng)
real = fidelity.measured(url, requests, deadline=600.0)
sim = fidelity.simulated(requests, profile)
print(json.dumps({"requests": len(requests), "measured": real, "simulated": sim}))
"""


def kernel_seconds(tid: int) -> float:
    """CPU time a thread of this process spent in the kernel (system calls: GIL hand-overs,
    wake-ups, socket writes), from /proc."""
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")  # stime, the 15th field


class Probe:
    """Counts the engine's steps, tokens and host time by wrapping its runner and its waits."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.steps = self.tokens = self.follow_steps = 0
        self.gap = self.runner_cpu = 0.0
        self._last_end: float | None = None
        runner = engine.runner
        execute = runner.execute
        cond_wait = engine._cond.wait

        def timed_execute(step):
            start = time.perf_counter()
            if self._last_end is not None:
                self.gap += start - self._last_end
                self.follow_steps += 1
            cpu = time.thread_time()
            out = execute(step)
            self.runner_cpu += time.thread_time() - cpu
            self.steps += 1
            self.tokens += len(out)
            self._last_end = time.perf_counter()
            return out

        def timed_wait(timeout=None):
            self._last_end = None  # the engine went idle: the next step follows no other
            return cond_wait(timeout)

        runner.execute = timed_execute
        engine._cond.wait = timed_wait
        self.engine_tid = engine._thread.native_id
        self.engine_clock = time.pthread_getcpuclockid(engine._thread.ident)
        self.loop_clock = time.pthread_getcpuclockid(threading.main_thread().ident)

    def snapshot(self) -> dict:
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "follow_steps": self.follow_steps,
            "gap": self.gap,
            "runner_cpu": self.runner_cpu,
            "engine_kernel_cpu": kernel_seconds(self.engine_tid),
            "engine_cpu": time.clock_gettime(self.engine_clock),
            "loop_cpu": time.clock_gettime(self.loop_clock),
            "process_cpu": time.process_time(),
            "wall": time.perf_counter(),
        }


def report(before: dict, after: dict) -> dict:
    d = {k: after[k] - before[k] for k in before}
    steps, tokens = max(d["steps"], 1), max(d["tokens"], 1)
    d["engine_cpu"] -= d["runner_cpu"]  # the emulated GPU's own bookkeeping is not host time
    return {
        "steps": d["steps"],
        "tokens": d["tokens"],
        "engine_cpu_per_step_us": round(d["engine_cpu"] / steps * 1e6, 1),
        "engine_cpu_per_token_us": round(d["engine_cpu"] / tokens * 1e6, 1),
        "engine_kernel_share": round(d["engine_kernel_cpu"] / max(d["engine_cpu"], 1e-9), 2),
        "engine_gap_per_step_us": round(d["gap"] / max(d["follow_steps"], 1) * 1e6, 1),
        "loop_cpu_per_token_us": round(d["loop_cpu"] / tokens * 1e6, 1),
        "process_cpu_share": round(d["process_cpu"] / d["wall"], 3),
    }


def engine_only(steps: int = 3000, rows: int = 64) -> None:
    from carpool_replica.limits import default_limits
    from carpool_replica.scheduler import Request
    from carpool_worker.engine import Engine

    class Runner:
        num_slots, max_seq_len = rows, 100_000
        kv_cache_tokens, kv_block_tokens = rows * 100_000, 100_000

        def execute(self, step):
            return {r.id: 7 for r in step.sampling}

    class Hub:
        def post(self, batch) -> None:
            pass

    class HubSink:
        hub = Hub()

        def __call__(self, event) -> None:
            pass

    loop = asyncio.new_event_loop()  # the HTTP side: queues on a loop of another thread
    threading.Thread(target=loop.run_forever, daemon=True).start()
    try:
        from carpool_worker.app import LoopHub, QueueSink

        hub = LoopHub(loop)

        def to_loop():
            return QueueSink(hub, asyncio.Queue())
    except ImportError:  # the worker before LoopHub: one thread-safe call per event

        def to_loop():
            queue = asyncio.Queue()
            return lambda event: loop.call_soon_threadsafe(queue.put_nowait, event)

    kinds = (("plain", lambda: lambda event: None), ("hub", HubSink), ("event loop", to_loop))
    for kind, new_sink in kinds:
        engine = Engine(Runner(), default_limits(rows), prefill_token_budget=512)
        for _ in range(rows):
            engine.submit(Request([1] * 16, 50_000, "default", time.monotonic(), sink=new_sink()))

        def one(e=engine) -> None:  # the engine loop's body, on this thread
            with e._cond:
                now = e.clock()
                step = e.scheduler.schedule(now)
                counts = e.scheduler.counts()
            e.metrics.set_queue_counts(counts)
            e._after_schedule(step, now)
            e._run_step(step)

        for _ in range(50):
            one()
        start = time.thread_time()
        for _ in range(steps):
            one()
        cpu = (time.thread_time() - start) / steps
        line = {"engine_only": kind, "rows": rows, "cpu_per_step_us": round(cpu * 1e6, 1)}
        print(json.dumps(line | {"cpu_per_token_us": round(cpu / rows * 1e6, 2)}), flush=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", type=Path, default=Path("profiles/h200-bench-8b.json"))
    p.add_argument("--rate", type=float, action="append", default=[], help="Poisson req/s")
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--burst", type=int, action="append", default=[], help="requests at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--decode-burst",
        type=int,
        action="append",
        default=[],
        help="requests at once, all of --decode-shape (decode-heavy: full batches of tokens)",
    )
    p.add_argument("--decode-shape", default="128x256", help="prompt x output tokens")
    p.add_argument("--engine-only", action="store_true", help="the engine alone, no HTTP")
    p.add_argument(
        "--charge-host",
        action="store_true",
        help="start each step when the host launches it (no lag forgiven), as a GPU that waits "
        "for the host does: the host's time per step then adds to the step's",
    )
    args = p.parse_args(argv)
    if args.engine_only:
        engine_only()
        return 0

    import uvicorn

    from carpool_worker import emulated
    from carpool_worker.app import create_app
    from carpool_worker.server import Worker, WorkerSettings, uvicorn_config

    if args.charge_host:
        emulated.MAX_HOST_LAG_SECONDS = 0.0
    profile = json.loads(args.profile.read_text())
    worker = Worker(
        WorkerSettings(
            model=profile["model"], max_batch_size=profile["max_batch_size"], emulate=args.profile
        )
    )
    worker.load()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn_config(worker, create_app(worker, False), "127.0.0.1", port, log_level="warning")
    )
    url = f"http://127.0.0.1:{port}"
    phases = [("burst", 0.0, n, "") for n in args.burst]
    phases += [("decode", 0.0, n, args.decode_shape) for n in args.decode_burst]
    phases += [("rate", r, 0, "") for r in args.rate]

    def drive() -> None:
        while not server.started:
            time.sleep(0.1)
        probe = Probe(worker.engine)
        for kind, rate, count, shape in phases:
            before = probe.snapshot()
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PHASE,
                    url,
                    str(args.profile),
                    str(rate),
                    str(args.duration),
                    str(count),
                    shape,
                    str(args.seed),
                ],  # fmt: skip
                capture_output=True,
                text=True,
                check=True,
                env=os.environ,
            )
            after = probe.snapshot()
            result = json.loads(out.stdout)
            line = {"phase": kind, "rate": rate or None, "burst": count or None}
            line |= {"requests": result["requests"]} | report(before, after)
            line["requests_per_second"] = result["measured"]["requests_per_second"]
            line["simulated_requests_per_second"] = result["simulated"]["requests_per_second"]
            line["tokens_per_second"] = result["measured"]["tokens_per_second"]
            line["simulated_tokens_per_second"] = result["simulated"]["tokens_per_second"]
            line["ttft_p50_ms"] = round(1000 * (result["measured"]["ttft_p50_seconds"] or 0))
            line["simulated_ttft_p50_ms"] = round(
                1000 * (result["simulated"]["ttft_p50_seconds"] or 0)
            )
            print(json.dumps(line), flush=True)
        server.should_exit = True

    threading.Thread(target=drive, daemon=True).start()
    server.run()
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
