#!/usr/bin/env python3
"""Pyron's benchmark: starts the whole stack on this machine (NGINX with TLS, pyron-api,
pyron-worker, Redis with appendfsync always, the MongoDB wire server), wired as the NixOS
module wires them (NGINX to pyron-api, and Pyron to Redis, over unix sockets; MongoDB on
loopback TCP), drives it with oha through TLS, and prints one table (also written as JSON):

  1. the seed's target load (1,000 requests a minute) for 60 s: avg, p95, p99, errors;
  2. the highest sustained rate with p99 <= 50 ms and no errors;
  3. end-to-end lag (202 to jobs record) at that rate, p50 and p99, over every alert of
     the run (from the worker's lag histogram); then the goal, 3,000 alerts/s for 60 s,
     with its latency, its lag and the CPU each process used per 1,000 alerts;
  4. the ceiling: the same NGINX in front of a handler that answers 202 and stores
     nothing, and the ratio of (2) to it;
  5. peak memory (VmHWM) of pyron-api and pyron-worker;
and first the machine it ran on (CPU model, cores, memory, kernel): absolute figures hold
for that machine only, ratios within one run (Pyron's CPU to NGINX's) travel better.

usage: scripts/bench.py [--quick] [--json PATH] [--keep]
       scripts/bench.py --rate N [--seconds S] [--route] [--redis-stall MS] [--keep]
--quick shortens every run (for trying the script, not for figures).
--keep leaves the run's directory (stores and logs, a few hundred MB) in place; by
default it is removed when the run ends.
--rate runs the same stack at one fixed rate instead (60 s unless --seconds), and prints
its latency, its end-to-end lag and the CPU per process: for capacity planning. Then the
floor: the same rate to the 202-only handler behind the same NGINX, with the CPU of
both (what an axum server that stores nothing costs per request, beside NGINX).
--route adds pyron-forwarder and one route of every alert to a local HTTP sink (the
202-only handler, signed deliveries), and prints deliveries per second and the time from
receipt to delivery, p50 and p99, of every alert of the run (the issue's figure is
--rate 1000 --seconds 60 --route). Its floors: the handler's, as above, and a client
that sends each delivery as pyron-forwarder does and does nothing else
(examples/null_sender.rs), with `floors_to_nginx`, the ratio of Pyron's CPU to NGINX's
if Pyron did nothing but take each alert and send its delivery.
--redis-stall MS stops Redis (SIGSTOP) for MS milliseconds a third of the way into the
--rate run, as an fsync on a slow disk stops it with `appendfsync always`: with --route,
the deliveries show whether the alerts kept in MongoDB meanwhile arrived, in order.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"
P99_LIMIT = 0.050
# The goal: this rate sustained with p99 <= 50 ms, no errors and lag p99 <= 1 s.
GOAL_RATE = 3000
BODY = json.dumps({
    "ticker": "BTCUSDT", "exchange": "BINANCE", "interval": "5", "action": "buy",
    "price": 67234.5, "quantity": 0.01, "strategy": "bench",
})


def say(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


def wait_listening(connect, where, what, proc, timeout=30):
    """Waits until `connect()` succeeds; exits if `proc` ends or `timeout` s pass first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            connect()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {where}")


def wait_port(port, what, proc):
    wait_listening(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close(),
                   port, what, proc)


def wait_socket(path, what, proc):
    def connect():
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
    wait_listening(connect, path, what, proc)
    # NGINX's workers run as another user when the benchmark runs as root.
    os.chmod(path, 0o666)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """Every server of the benchmark, in one temporary directory."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def spawn(self, name, args, env=None):
        log = open(self.work / f"{name}.log", "w")
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.procs.append((name, proc))
        return proc

    def stop(self):
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def nginx(self, name, upstream, cert, key):
        prefix = self.work / name
        prefix.mkdir()
        http_port, https_port = free_port(), free_port()
        env = dict(os.environ, RATE="1000000", BURST="1000000")
        conf = subprocess.run(
            [str(ROOT / "scripts/render-nginx.sh"), str(prefix), f"127.0.0.1:{http_port}",
             f"127.0.0.1:{https_port}", f":{https_port}", str(cert), str(key), upstream],
            env=env, check=True, capture_output=True, text=True).stdout
        # One worker per core, as a real deployment would run.
        conf = conf.replace("worker_processes 1;", "worker_processes auto;")
        (prefix / "nginx.conf").write_text(conf)
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        proc = self.spawn(name, [nginx, "-c", str(prefix / "nginx.conf"), "-p", str(prefix),
                                 "-e", str(prefix / "error.log")])
        wait_port(https_port, name, proc)
        return https_port


def oha(url, seconds, rate=None, connections=32):
    args = ["oha", "-z", f"{seconds}s", "-c", str(connections), "--no-tui", "--insecure",
            "--output-format", "json", "-m", "POST", "-H", "Content-Type: application/json",
            "-d", BODY, url]
    if rate:
        args[1:1] = ["-q", str(rate), "--latency-correction"]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    codes = {int(k): v for k, v in data["statusCodeDistribution"].items()}
    ok = codes.get(202, 0)
    errors = sum(v for k, v in codes.items() if k != 202) + sum(
        v for k, v in data["errorDistribution"].items() if "deadline" not in k)
    return {
        "rate": rate,
        "sent": sum(codes.values()),
        "ok": ok,
        "errors": errors,
        "rps": ok / seconds,
        "avg_ms": data["summary"]["average"] * 1000 if data["summary"]["average"] else None,
        "p95_ms": (data["latencyPercentiles"]["p95"] or 0) * 1000,
        "p99_ms": (data["latencyPercentiles"]["p99"] or 0) * 1000,
    }


def highest_rate(url, seconds, start=250, connections=64):
    """Steps the rate up (x1.5) while p99 <= 50 ms with no errors and the rate is met, then
    narrows the last step down by halves, twice."""
    def good(run, rate):
        return (run["errors"] == 0 and run["p99_ms"] <= P99_LIMIT * 1000
                and run["rps"] >= 0.95 * rate)

    def attempt(rate):
        run = oha(url, seconds, rate, connections)
        ok = good(run, rate)
        say(f"  {rate}/s: {run['rps']:.0f}/s answered, p99 {run['p99_ms']:.1f} ms, "
            f"{run['errors']} errors -> {'ok' if ok else 'over'}")
        return run, ok

    best, rate = None, start
    while True:
        run, ok = attempt(rate)
        if not ok:
            break
        best, rate = run, int(rate * 1.5)
    if best is None:
        return None
    low, high = best["rate"], rate
    for _ in range(2):
        middle = (low + high) // 2
        run, ok = attempt(middle)
        if ok:
            best, low = run, middle
        else:
            high = middle
    return best


def drain(redis_port, timeout, streams=("webhook-jobs",)):
    """Waits until the streams are empty (the work stream, and with a route the deliveries
    stream, whose entries go once settled); False if they are not within `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        lengths = [subprocess.run(["redis-cli", "-p", str(redis_port), "XLEN", stream],
                                  check=True, capture_output=True, text=True).stdout.strip()
                   for stream in streams]
        if all(length == "0" for length in lengths):
            return True
        time.sleep(0.2)
    return False


def cpu_seconds(pid):
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid):
    """CPU time of a process and its children that are still running (NGINX workers)."""
    total = cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            try:
                total += cpu_seconds(int(child))
            except FileNotFoundError:
                pass
    return total


def context_switches(pid):
    """Context switches so far (voluntary, mostly sleeps until the next wake-up, and
    involuntary) of every thread of a process and of its children (NGINX workers)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(c) for c in children.read_text().split()]
    total = 0
    for p in pids:
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                for line in (task / "status").read_text().splitlines():
                    if "ctxt_switches:" in line:
                        total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


class CpuMeter:
    """CPU used by each named process between start() and stop(), and how often it was
    switched out (each a sleep and a wake-up, or a preemption)."""

    def __init__(self, procs):
        self.procs = procs

    def start(self):
        self.before = {name: (tree_cpu_seconds(p.pid), context_switches(p.pid))
                       for name, p in self.procs}

    def stop(self, alerts):
        used = {name: (tree_cpu_seconds(p.pid) - self.before[name][0],
                       context_switches(p.pid) - self.before[name][1])
                for name, p in self.procs}
        return {name: cpu_figures(s, n, alerts) for name, (s, n) in used.items()}


def cpu_figures(seconds, switches, alerts):
    """CPU seconds used and context switches over a run, as the benchmark prints them."""
    return {"cpu_s": round(seconds, 2),
            "ms_per_1000_alerts": round(seconds * 1e6 / alerts, 1) if alerts else None,
            "switches_per_alert": round(switches / alerts, 2) if alerts else None}


LAG_BOUNDS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


def counters(redis_port, key):
    """A Redis hash of counters, as numbers."""
    raw = subprocess.run(["redis-cli", "-p", str(redis_port), "HGETALL", key],
                         check=True, capture_output=True, text=True).stdout.split()
    return dict(zip(raw[::2], (int(v) for v in raw[1::2])))


def lag_histogram(redis_port):
    """The worker's cumulative lag histogram (pyron:stats:total): count at or below each
    bound, and the total count."""
    fields = counters(redis_port, "pyron:stats:total")
    return ([fields.get(f"lag_le_{b:g}", 0) for b in LAG_BOUNDS_S], fields.get("lag_count", 0))


def histogram_summary(before, after):
    """p50, p99 and the share within 1 s of what a cumulative histogram (bucket counts,
    total) counted between two readings."""
    buckets = [a - b for a, b in zip(after[0], before[0])]
    count = after[1] - before[1]
    return {"p50_ms": lag_quantile(buckets, count, 0.5),
            "p99_ms": lag_quantile(buckets, count, 0.99),
            "within_1s": buckets[LAG_BOUNDS_S.index(1.0)] / count if count else None}


def lag_quantile(buckets, count, q):
    """Prometheus' histogram_quantile: linear within the bucket the quantile falls in; None
    past the last bound."""
    rank, lower, below = q * count, 0.0, 0
    for bound, at_or_below in zip(LAG_BOUNDS_S, buckets):
        if at_or_below >= rank:
            inside = at_or_below - below
            share = (rank - below) / inside if inside else 1.0
            return (lower + (bound - lower) * share) * 1000
        lower, below = bound, at_or_below
    return None


def stall(proc, at_s, ms):
    """Stops `proc` (SIGSTOP) `at_s` seconds from now for `ms` milliseconds, as an fsync on
    a slow disk stops Redis with `appendfsync always`; a thread, so that the run goes on."""
    def run():
        time.sleep(at_s)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(ms / 1000)
        proc.send_signal(signal.SIGCONT)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def lag_run(redis_port, url, rate, seconds, meter, route=False, redis_stall=None):
    """One fixed-rate run: its answers, the end-to-end lag of every alert it sent (from the
    worker's lag histogram), and the CPU each process used, the worker's (and with a
    route the forwarder's) until it has drained what the run queued. With a route, also
    the run's deliveries (`deliveries`). `redis_stall`: (Redis' process, ms) to stop it
    for a third of the way into the run."""
    before = lag_histogram(redis_port)
    sent_before = delivery_counts(redis_port) if route else None
    meter.start()
    started = time.time()
    stalling = stall(redis_stall[0], seconds / 3, redis_stall[1]) if redis_stall else None
    run = oha(url, seconds, rate, 64)
    if stalling:
        stalling.join()
        run["redis_stall"] = {"at_s": round(seconds / 3, 1), "ms": redis_stall[1]}
    streams = ("webhook-jobs", "webhook-deliveries") if route else ("webhook-jobs",)
    drained = drain(redis_port, timeout=300, streams=streams)
    run["drain_s_after_run"] = round(time.time() - started - seconds, 1)
    run["cpu"] = meter.stop(run["ok"])
    # Pyron's own processes against the NGINX in front of them, in the same run: a ratio
    # that holds from one machine to another where absolute figures do not.
    own = sum(v["cpu_s"] for name, v in run["cpu"].items() if name.startswith("pyron-"))
    nginx = run["cpu"].get("nginx-pyron", {}).get("cpu_s")
    run["pyron_cpu_to_nginx_cpu"] = round(own / nginx, 2) if nginx else None
    after = lag_histogram(redis_port)
    lag = {"samples": after[1] - before[1], "drained": drained,
           **histogram_summary(before, after)}
    if route:
        # Against what the worker processed, not oha's `ok`: at its deadline oha drops the
        # answers still in flight, of alerts Pyron accepted and delivers all the same.
        lag["deliveries"] = deliveries(sent_before, delivery_counts(redis_port),
                                       lag["samples"], seconds)
    return run, lag


def floor_run(stack, url, rate, seconds):
    """The same fixed rate against the handler that answers 202 and stores nothing (the
    same framework, runtime and NGINX as pyron-api): what receiving alone costs, per
    request, beside NGINX's cost."""
    meter = CpuMeter([(n, p) for n, p in stack.procs if n in ("nginx-null", "null-handler")])
    meter.start()
    run = oha(url, seconds, rate, 64)
    run["cpu"] = meter.stop(run["ok"])
    handler, nginx = (run["cpu"][n]["cpu_s"] for n in ("null-handler", "nginx-null"))
    run["handler_cpu_to_nginx_cpu"] = round(handler / nginx, 2) if nginx else None
    return run


def sender_floor(stack, url, rate, seconds):
    """The route's floor: a client that sends what pyron-forwarder sends, as it sends it
    (examples/null_sender.rs: the same HTTP client, one request at a time, in the
    worker's bursts) and does nothing else, to the same sink at the same rate: what one
    delivery's HTTP exchange costs a client, beside the sink's cost."""
    meter = CpuMeter([(n, p) for n, p in stack.procs if n == "null-handler"])
    meter.start()
    sender = subprocess.Popen([str(ROOT / "target/release/examples/null_sender"), url,
                               str(rate), str(seconds)], stdout=subprocess.PIPE, text=True)
    out = sender.stdout.read()
    # wait4 for the sender's own CPU and switches, which /proc no longer has once it ended.
    _, status, usage = os.wait4(sender.pid, 0)
    sender.returncode = os.waitstatus_to_exitcode(status)
    if sender.returncode != 0:
        sys.exit(f"null_sender failed: {out.strip()}")
    sent = int(out.split()[0])
    cpu = meter.stop(sent)
    cpu["null-sender"] = cpu_figures(usage.ru_utime + usage.ru_stime,
                                     usage.ru_nvcsw + usage.ru_nivcsw, sent)
    return {"sent": sent, "cpu": cpu}


def delivery_counts(redis_port):
    """The forwarders' counters (pyron:deliveries:counts): settled deliveries by status,
    and the cumulative receipt-to-delivery histogram with its count."""
    fields = counters(redis_port, "pyron:deliveries:counts")
    status = {s: sum(v for k, v in fields.items()
                     if not k.startswith("~") and k.endswith(f":{s}"))
              for s in ("delivered", "expired", "dead")}
    return (status, ([fields.get(f"~latency:le_{b:g}", 0) for b in LAG_BOUNDS_S],
                     fields.get("~latency:count", 0)))


def deliveries(before, after, expected, seconds):
    """The run's deliveries, from the forwarders' counters before and after it (read from
    Redis, as the dashboard does: the forwarder logs at its default level while measured):
    how many (and `expected`, the alerts processed, one delivery each), and their
    receipt-to-delivery time, p50 and p99."""
    (status0, latency0), (status1, latency1) = before, after
    settled = {s: status1[s] - status0[s] for s in status1}
    return {"delivered": settled["delivered"], "expected": expected,
            "expired_or_dead": settled["expired"] + settled["dead"],
            "per_second": round(settled["delivered"] / seconds, 1),
            **histogram_summary(latency0, latency1)}


def machine():
    """What the figures were measured on: CPU model, cores, memory, kernel."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:")), None)
    return {"cpu": model, "cores": os.cpu_count(), "memory_mib": memory, "kernel": os.uname().release}


def vm_hwm(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def finish(work, keep):
    """Removes the run's directory (its stores hold every alert of the run: hundreds of MB
    a run), unless asked to keep it."""
    if keep:
        say(f"the run's stores and logs are kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "target/bench/bench.json"))
    parser.add_argument("--rate", type=int, help="run one fixed rate (alerts/s) instead")
    parser.add_argument("--seconds", type=int, default=60, help="length of the --rate run")
    parser.add_argument("--route", action="store_true",
                        help="with --rate: deliver every alert to a local HTTP sink too")
    parser.add_argument("--redis-stall", type=int, metavar="MS",
                        help="with --rate: stop Redis (SIGSTOP) for MS ms a third of the way in")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run's stores and logs (a few hundred MB) to look into")
    args = parser.parse_args()
    seed_seconds, step_seconds, goal_seconds = (10, 4, 10) if args.quick else (60, 10, 60)

    if not shutil.which("oha"):
        say("installing oha (cargo install --locked oha)")
        subprocess.run(["cargo", "install", "--locked", "oha", "--version", "1.16.0"], check=True)
    subprocess.run([str(ROOT / "scripts/install-deps.sh")], check=True, stdout=sys.stderr)
    say("building release binaries")
    subprocess.run(["cargo", "build", "--release", "--locked", "--bins", "--example", "null_handler",
                    "--example", "null_sender", "--quiet"], cwd=ROOT, check=True)

    work = Path(tempfile.mkdtemp(prefix="pyron-bench-"))
    work.chmod(0o755)
    stack = Stack(work)
    try:
        cert, key = work / "cert.pem", work / "key.pem"
        subprocess.run([str(ROOT / "scripts/dev-cert.sh"), str(work)], check=True,
                       capture_output=True)
        redis_port, mongo_port, null_port = (free_port() for _ in range(3))
        (work / "redis").mkdir()
        # As the NixOS module deploys it: pyron-api behind NGINX on a unix socket, Redis
        # reached on its unix socket (the port stays open for redis-cli).
        redis_socket, api_socket, null_socket = (work / "redis.sock", work / "api.sock",
                                                  work / "null.sock")
        redis = stack.spawn("redis", ["redis-server", str(ROOT / "dev/redis.conf"), "--port",
                                      str(redis_port), "--unixsocket", str(redis_socket),
                                      "--unixsocketperm", "700", "--dir", str(work / "redis")])
        wait_port(redis_port, "redis", redis)
        (work / "mongo").mkdir()
        if shutil.which("mongod"):
            mongo = stack.spawn("mongo", ["mongod", "--port", str(mongo_port), "--bind_ip",
                                          "127.0.0.1", "--dbpath", str(work / "mongo"), "--quiet"])
            wire = "mongod"
        else:
            mongo = stack.spawn("mongo", [str(ROOT / ".tools/bin/pyron-ferretdb"), "--listen-addr",
                                          f"127.0.0.1:{mongo_port}", "--sqlite-dir",
                                          str(work / "mongo"), "--log-level", "error"])
            wire = "FerretDB 1.24 (SQLite)"
        wait_port(mongo_port, "mongo", mongo)
        sink_url = f"http://127.0.0.1:{null_port}/webhook/sink"
        if args.route:
            (work / "signing").write_text("whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" + "\n")
            (work / "pyron.toml").write_text(
                "[destinations.sink]\nkind = \"http\"\n"
                f"url = \"{sink_url}\"\n"
                f"secret_file = \"{work / 'signing'}\"\n\n"
                "[[routes]]\nname = \"all\"\ndestinations = [\"sink\"]\n")
        env = {"PATH": os.environ["PATH"], "PYRON_BIND": f"unix:{api_socket}",
               "PYRON_REDIS_URL": f"redis+unix://{redis_socket}", "MONGO_URI": f"mongodb://127.0.0.1:{mongo_port}",
               "PYRON_WEBHOOK_TOKEN": TOKEN, "PYRON_LOG": "info", **{k: v for k, v in os.environ.items() if k.startswith("PYRON_WORKER_")}}
        if args.route:
            env["PYRON_CONFIG"] = str(work / "pyron.toml")
        api = stack.spawn("pyron-api", [str(ROOT / "target/release/pyron-api")], env)
        wait_socket(api_socket, "pyron-api", api)
        worker = stack.spawn("pyron-worker", [str(ROOT / "target/release/pyron-worker")], env)
        # The ceiling's handler on a unix socket as pyron-api is; the route's sink on TCP.
        null = stack.spawn("null-handler", [str(ROOT / "target/release/examples/null_handler"),
                                            f"unix:{null_socket}", f"127.0.0.1:{null_port}"])
        wait_port(null_port, "null handler", null)
        wait_socket(null_socket, "null handler", null)
        if args.route:
            # At the default level, as a user runs it: the delivery figures come from the
            # forwarder's counters in Redis, not from a log line per delivery.
            stack.spawn("pyron-forwarder", [str(ROOT / "target/release/pyron-forwarder")], env)
        pyron_tls = stack.nginx("nginx-pyron", f"unix:{api_socket}", cert, key)
        null_tls = stack.nginx("nginx-null", f"unix:{null_socket}", cert, key)
        pyron_url = f"https://localhost:{pyron_tls}/webhook/{TOKEN}"
        null_url = f"https://localhost:{null_tls}/webhook/{TOKEN}"
        time.sleep(1)
        meter = CpuMeter([(n, p) for n, p in stack.procs
                          if n in ("redis", "mongo", "pyron-api", "pyron-worker", "nginx-pyron",
                                   "pyron-forwarder", "null-handler")])
        if args.rate:
            say(f"{args.rate} alerts/s for {args.seconds} s through TLS"
                + (", each delivered to a local HTTP sink" if args.route else ""))
            if args.redis_stall:
                say(f"   Redis stopped for {args.redis_stall} ms, {args.seconds / 3:.0f} s in")
            run, lag = lag_run(redis_port, pyron_url, args.rate, args.seconds, meter, args.route,
                               (redis, args.redis_stall) if args.redis_stall else None)
            result = {"machine": {**machine(), "wire_server": wire}, "run": run, "lag": lag,
                      "peak_memory": {"pyron_api_mib": vm_hwm(api.pid),
                                      "pyron_worker_mib": vm_hwm(worker.pid)}}
            if args.route:
                result["deliveries"] = lag.pop("deliveries")
            say("   the floor: the same rate through the same NGINX to a handler that "
                "stores nothing")
            result["floor"] = floor_run(stack, null_url, args.rate, args.seconds)
            if args.route:
                say("   the route's floor: the same rate from a client that only sends, to "
                    "the same sink")
                result["sender_floor"] = sender_floor(stack, sink_url, args.rate, args.seconds)
                # What the goal's ratio would be if Pyron did nothing but take each alert
                # and send its delivery: the two floors against the floor run's NGINX.
                floor_cpu, sender_cpu = result["floor"]["cpu"], result["sender_floor"]["cpu"]
                result["floors_to_nginx"] = round(
                    (floor_cpu["null-handler"]["ms_per_1000_alerts"]
                     + sender_cpu["null-sender"]["ms_per_1000_alerts"])
                    / floor_cpu["nginx-null"]["ms_per_1000_alerts"], 2)
            print(json.dumps(result, indent=2))
            return

        say(f"1. the seed's target, 1,000 requests a minute for {seed_seconds} s, through TLS")
        seed = oha(pyron_url, seed_seconds, rate=1000 / 60, connections=20)
        say("2. the highest rate with p99 <= 50 ms and no errors, through TLS")
        best = highest_rate(pyron_url, step_seconds)
        lag = None
        if best:
            # The search leaves a backlog when the worker falls behind: let it drain, so the
            # lag below is that of this run alone.
            say("   waiting for the worker to drain the stream")
            drain(redis_port, timeout=600)
            say(f"3. end-to-end lag at {best['rate']}/s")
            _, lag = lag_run(redis_port, pyron_url, best["rate"], step_seconds, meter)
        say(f"   the goal: {GOAL_RATE}/s for {goal_seconds} s, its lag and CPU per process")
        goal, goal_lag = lag_run(redis_port, pyron_url, GOAL_RATE, goal_seconds, meter)
        say("4. the ceiling: the same NGINX in front of a handler that stores nothing")
        # The handler that stores nothing is at least as fast: start where Pyron stopped.
        ceiling = highest_rate(null_url, step_seconds, start=best["rate"] if best else 250)
        memory = {"pyron_api_mib": vm_hwm(api.pid), "pyron_worker_mib": vm_hwm(worker.pid)}
    finally:
        stack.stop()
        finish(work, args.keep)

    result = {
        "machine": {**machine(), "wire_server": wire},
        "seed_target": seed,
        "sustained": best,
        "lag": lag,
        "goal": {"run": goal, "lag": goal_lag},
        "ceiling": ceiling,
        "ratio_to_ceiling": (best["rps"] / ceiling["rps"]) if best and ceiling else None,
        "peak_memory": memory,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")

    def ms(v):
        return "–" if v is None else f"{v:.1f} ms" if v < 1000 else f"{v / 1000:.2f} s"

    def lags(lag):
        if not lag or lag["p50_ms"] is None:
            return "–"
        p99 = ms(lag["p99_ms"]) if lag["p99_ms"] is not None else "over 10 s"
        return (f"p50 {ms(lag['p50_ms'])}, p99 {p99} ({lag['within_1s']:.1%} within 1 s; "
                f"backlog gone {goal_or(lag)})")

    def goal_or(lag):
        return "at the end" if lag["drained"] else "not within 5 minutes"

    cpu = goal["cpu"]
    rows = [
        ("1. seed target (1,000/min, 60 s, TLS)",
         f"avg {ms(seed['avg_ms'])}, p95 {ms(seed['p95_ms'])}, p99 {ms(seed['p99_ms'])}, "
         f"{seed['errors']} errors of {seed['sent']}"),
        ("2. highest rate, p99 <= 50 ms, no errors",
         f"{best['rps']:.0f} alerts/s (p99 {ms(best['p99_ms'])})" if best else "below 250/s"),
        ("3. end-to-end lag at that rate", lags(lag)),
        (f"   {GOAL_RATE:,}/s for {goal_seconds} s (the goal)",
         f"p99 {ms(goal['p99_ms'])}, {goal['errors']} errors of {goal['sent']}; "
         f"lag {lags(goal_lag)}"),
        ("   CPU per 1,000 alerts at that rate",
         ", ".join(f"{name} {v['ms_per_1000_alerts']:.0f} ms" for name, v in cpu.items())
         + f"; Pyron's own to NGINX's: {goal['pyron_cpu_to_nginx_cpu']}x"),
        ("4. ceiling (NGINX + 202-only handler)",
         f"{ceiling['rps']:.0f}/s; Pyron at {result['ratio_to_ceiling']:.0%} of it"
         if best and ceiling else "–"),
        ("5. peak memory",
         f"pyron-api {memory['pyron_api_mib']:.1f} MiB, pyron-worker {memory['pyron_worker_mib']:.1f} MiB"),
    ]
    width = max(len(r[0]) for r in rows)
    m = result["machine"]
    print(f"Pyron benchmark on {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, "
          f"Linux {m['kernel']}; {wire}; everything on this machine")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"  (JSON: {args.json})")


if __name__ == "__main__":
    main()
