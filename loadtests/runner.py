"""``triton-deploy loadtest`` as one function: headless Locust runs (one, or one per sweep level) against a Triton
server, with Triton's own metrics scraped around each run, plots, and an SLO verdict.

Locust runs as a subprocess (``python -m locust -f locustfile.py --headless ...``), the way it is meant to be run;
with ``processes > 1`` it forks a master and workers so the load generator is not the bottleneck. Its CPU time is
measured from the outside (the whole process tree) and reported per request.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from triton_deploy import metrics
from triton_deploy.clients.tls import TlsOptions
from triton_deploy.errors import LoadTestError, Problem, TritonDeployError, UsageError, raise_problems, unknown_choice
from triton_deploy.fsutil import check_writable
from triton_deploy.loadtests import plots
from triton_deploy.loadtests.payloads import PoolOptions
from triton_deploy.loadtests.shapes import ShapePlan, plan_shape, shape_problems
from triton_deploy.loadtests.slo import SLO, SLOViolation
from triton_deploy.progress import Reporter
from triton_deploy.server import ServerOptions, TritonServer, free_ports

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
CONFIG = HERE / "locust.conf"
SHAPES = {"step": HERE / "shape_step.py", "spike": HERE / "shape_spike.py"}
PREFLIGHT_READY_S = 30.0  # a server still loading its models gets this long; a dead port fails at once
LOCUST_OK = {0, 1, 3}  # 1: some requests failed (Locust's --exit-code-on-error), 3: the locustfile's SLO gate


@dataclass(frozen=True)
class LoadTestOptions:
    output: Path = Path("results/loadtests")
    url: str | None = None  # HOST:PORT of a running server; None = start one on ``repository``
    repository: Path | None = None
    protocol: str = "http"
    model: str = "digits"
    users: int = 8
    spawn_rate: float | None = None  # default: all users within a second
    duration_s: float = 30.0
    sweep: tuple[int, ...] = ()  # user counts, one run each; overrides ``users``
    processes: int = 1
    batch_size: int = 1
    top_k: int = 1
    image_dir: Path | None = None
    image_sizes: tuple[int, ...] = (64, 128)
    image_formats: tuple[str, ...] = ("PNG", "JPEG")
    pool_size: int = 64
    shape: str | None = None  # step | spike: a LoadTestShape drives the user count, peaking at users over duration
    shape_args: dict = field(default_factory=dict)  # e.g. {"step-users": 4} passed as --step-users 4; overrides those
    slo: SLO = SLO()
    metrics_url: str | None = None  # default: the local server's, or http://HOST:8002/metrics
    tls: TlsOptions | None = None  # for --url: gRPC TLS, or HTTPS through a gateway (also an https:// --metrics-url)

    def problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.url is None and self.repository is None:
            problems.append(("nothing to load: give the server's address or a repository to serve",
                             "add --url HOST:PORT or --repository DIR"))
        if self.url is not None and not re.match(r"^(https?://)?[\w.\-\[\]:]+:\d+/?$", self.url):
            problems.append((f"--url {self.url!r} is not HOST:PORT", "e.g. --url 127.0.0.1:8001"))
        if self.protocol not in ("http", "grpc"):
            problems.append(unknown_choice("protocol", self.protocol, "--protocol", ("http", "grpc")))
        for flag, value in (("--users", self.users), ("--processes", self.processes),
                            ("--batch-size", self.batch_size), ("--top-k", self.top_k)):
            if value < 1:
                problems.append((f"{flag} must be at least 1, got {value}", f"check {flag}"))
        if any(n < 1 for n in self.sweep):
            problems.append((f"sweep levels {list(self.sweep)} must all be at least 1", "check --sweep"))
        if self.duration_s < 1:
            problems.append((f"--duration must be at least 1 s, got {self.duration_s:g}", "check --duration"))
        if self.shape is not None and self.shape not in SHAPES:
            problems.append(unknown_choice("load shape", self.shape, "--shape", tuple(SHAPES)))
        elif self.shape and self.sweep:
            problems.append(("a load shape and a sweep both set the user count", "drop --shape or --sweep"))
        elif self.shape:  # the shape's own options (--shape-arg)
            problems += shape_problems(self.shape, self.shape_args)
        if self.tls is not None and self.url is None:
            problems.append(("--tls-* apply to a running server (--url); the server --repository starts serves "
                             "plaintext on loopback", "add --url, or drop --tls-ca/--tls-cert/--tls-key"))
        elif self.tls is not None:
            problems += self.tls.problems()
        return problems + self.pool.problems() + self.slo.problems()

    @property
    def pool(self) -> PoolOptions:
        """The image pool each Locust process builds from ``--image-*``/``--pool-size`` (checked here, before Locust
        starts, rather than in every worker)."""
        return PoolOptions(image_dir=self.image_dir, count=self.pool_size, sizes=self.image_sizes,
                           formats=self.image_formats)

    def check(self) -> None:
        raise_problems(self.problems())

    def shape_plan(self) -> ShapePlan | None:
        """What the load shape will run (None without one)."""
        return plan_shape(self.shape, self.shape_args, self.users, self.duration_s) if self.shape else None


@dataclass
class LoadTestResult:
    directory: Path
    summary: dict

    @property
    def violations(self) -> list[str]:
        return [f"{r['users']} users: {v}" if len(self.summary["runs"]) > 1 else v
                for r in self.summary["runs"] for v in r["slo_violations"]]


def parse_duration(text: str) -> float:
    """'30s', '2m', '1m30s', '1h' or plain seconds -> seconds."""
    text = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not parts or not any(parts.groups()):
        raise UsageError(f"cannot read duration {text!r}", hint="use e.g. --duration 30s, 2m or 1m30s")
    h, m, s = (int(g or 0) for g in parts.groups())
    return float(h * 3600 + m * 60 + s)


def run_loadtest(options: LoadTestOptions, reporter: Reporter | None = None) -> LoadTestResult:
    """Run the load test(s), write everything into a new timestamped folder under ``options.output`` and return
    the summary. Raises ``SLOViolation`` (after writing all files) when an objective is broken."""
    reporter = reporter or Reporter(quiet=True)
    options.check()
    check_writable(Path(options.output), flag="--output")
    plan = options.shape_plan()
    if plan is not None:
        reporter.info(shape_line(plan, options))
    if options.url is not None:  # before a folder is made: a typo in --url or --model leaves nothing behind
        preflight(options, options.url.split("://", 1)[-1].rstrip("/"))
    directory = _new_run_directory(Path(options.output))
    with ExitStack() as stack:
        url, metrics_url = _endpoints(options, directory, stack, reporter)
        if options.url is None:
            preflight(options, url)
        levels = options.sweep or (options.users,)
        runs = []
        for users in levels:
            run_dir = directory if len(levels) == 1 else directory / level_folder(users)
            run_dir.mkdir(parents=True, exist_ok=True)
            runs.append(_one_run(options, url, metrics_url, users, run_dir, reporter))
    files = []
    if len(levels) > 1:
        files.append(plots.plot_sweep(runs, directory / "sweep.png",
                                      f"{options.model} over {options.protocol}, batch {options.batch_size}"))
    summary = {
        "started": directory.name.removeprefix("loadtest-"),
        "url": url, "protocol": options.protocol, "model": options.model, "batch_size": options.batch_size,
        "duration_s": plan.duration_s if plan else options.duration_s, "processes": options.processes,
        "shape": plan.to_dict() | {"note": shape_line(plan, options)} if plan else None,
        "slo": options.slo.to_dict(), "runs": runs,
        "passed": not any(r["slo_violations"] for r in runs),
        "files": sorted({str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()} |
                        {"summary.json"}),
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    result = LoadTestResult(directory, summary)
    if result.violations:
        failure = next((r["top_failure"] for r in runs if r["top_failure"]), None)
        cause = f"; most frequent failure: {failure}" if failure else ""
        error = SLOViolation("SLO broken: " + "; ".join(result.violations) + cause, hint=f"results in {directory}")
        error.result = result  # the CLI still prints the table and the folder
        raise error
    return result


def preflight(options: LoadTestOptions, url: str) -> None:
    """What ``classify`` checks before its first image, with its words and exit codes: something answers at ``url``
    in ``options.protocol`` (30 otherwise, at once for a refused port or the other protocol's port), ``options.model``
    is served and ready (31) and is an image classifier that returns ``--top-k`` answers. Metadata only, no
    inference: the check is not counted as a prediction. Without it a dead port ran the whole duration and ended in
    "SLO broken" with raw exception text."""
    from triton_deploy.clients.classifier import ImageClassifier, check_top_k  # tritonclient: only when it runs

    with ImageClassifier(url, protocol=options.protocol, model=options.model, concurrency=1, tls=options.tls,
                         ready_timeout=PREFLIGHT_READY_S, retries=1) as client:
        check_top_k(options.top_k, client.plan)


def _new_run_directory(output: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    directory = output / f"loadtest-{stamp}"
    n = 1
    while directory.exists():
        n += 1
        directory = output / f"loadtest-{stamp}-{n}"
    directory.mkdir(parents=True)
    return directory


def _endpoints(options: LoadTestOptions, directory: Path, stack: ExitStack, reporter: Reporter) -> tuple[str, str]:
    if options.url is not None:
        url = options.url.split("://", 1)[-1].rstrip("/")
        host = url.rsplit(":", 1)[0]
        return url, options.metrics_url or f"http://{host}:8002/metrics"
    assert options.repository is not None  # LoadTestOptions.check: --url or --repository

    http_port, grpc_port, metrics_port = free_ports(3)
    server = TritonServer(ServerOptions(repository=Path(options.repository), http_port=http_port,
                                        grpc_port=grpc_port, metrics_port=metrics_port,
                                        log_file=directory / "triton.log", exit_timeout_s=10))
    with reporter.step(f"Starting Triton on {options.repository}"):
        stack.enter_context(server)
    url = server.grpc_url if options.protocol == "grpc" else server.http_url
    return url, options.metrics_url or server.metrics_url


def run_label(users: int, plan: ShapePlan | None) -> str:
    """'8 users', or a shape's users stage by stage: 'step shape, 2 -> 4 -> 6 -> 8 users'."""
    if plan is None:
        return f"{users} users"
    return f"{plan.name} shape, {' -> '.join(map(str, plan.stage_users))} users"


def shape_line(plan: ShapePlan, options: LoadTestOptions) -> str:
    """One line saying what a load shape runs and which of --users/--duration it replaces."""
    replaced = []
    if plan.peak_users != options.users:
        replaced.append(f"--users {options.users}")
    if plan.duration_s != options.duration_s:
        replaced.append(f"--duration {options.duration_s:g}s")
    note = f"it replaces {' and '.join(replaced)}" if replaced else "peak = --users, length = --duration"
    return f"--shape {plan.name} runs {plan.describe()}; {note}"


def tls_flags(tls: TlsOptions | None) -> list[str]:
    """The locustfile's --triton-tls-* flags for ``tls`` (its users build their clients from them)."""
    if tls is None:
        return []
    files = (("--triton-tls-ca", tls.ca), ("--triton-tls-cert", tls.cert), ("--triton-tls-key", tls.key))
    return ["--triton-tls"] + [arg for flag, path in files if path is not None
                               for arg in (flag, str(Path(path).absolute()))]


def locust_command(options: LoadTestOptions, url: str, users: int, run_dir: Path) -> list[str]:
    files = str(LOCUSTFILE) + (f",{SHAPES[options.shape]}" if options.shape else "")
    command = [
        sys.executable, "-m", "locust", "-f", files, "--config", str(CONFIG), "--headless",
        "--host", url, "--protocol", options.protocol, "--model", options.model,
        "--batch-size", str(options.batch_size), "--top-k", str(options.top_k),
        "--image-sizes", ",".join(map(str, options.image_sizes)),
        "--image-formats", ",".join(options.image_formats), "--pool-size", str(options.pool_size),
        *tls_flags(options.tls),
        "--csv", str(run_dir / "locust"), "--csv-full-history", "--html", str(run_dir / "report.html"),
        "--logfile", str(run_dir / "locust.log"), "--only-summary", "--exit-code-on-error", "1",
    ]
    if not options.shape:
        command += ["--users", str(users), "--spawn-rate", f"{options.spawn_rate or users:g}",
                    "--run-time", f"{math.ceil(options.duration_s)}s"]
    plan = options.shape_plan()
    for key, shape_value in (plan.args if plan else {}).items():
        command += [f"--{key}", f"{shape_value:g}"]
    if options.image_dir is not None:
        command += ["--image-dir", str(options.image_dir)]
    if options.processes > 1:

        # Locust's master listens on every interface at 5557 unless told otherwise: a second run on the same host (two
        # sweeps, a CI job beside a user's run) would find the port taken, and the workers need no outside access.
        (port,) = free_ports(1)
        command += ["--processes", str(options.processes), "--master-bind-host", "127.0.0.1",
                    "--master-bind-port", str(port), "--master-port", str(port)]
    for flag, value in (("--slo-p95-ms", options.slo.p95_ms), ("--slo-p99-ms", options.slo.p99_ms),
                        ("--slo-error-rate", options.slo.error_rate)):
        if value is not None:
            command += [flag, f"{value:g}"]
    return command


def _one_run(options: LoadTestOptions, url: str, metrics_url: str, users: int, run_dir: Path,
             reporter: Reporter) -> dict:
    before, scrape_error = _scrape(metrics_url, options.tls)
    command = locust_command(options, url, users, run_dir)
    (run_dir / "command.txt").write_text(" ".join(command) + "\n")
    rusage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    plan = options.shape_plan()
    planned = plan.duration_s if plan else options.duration_s
    label = run_label(users, plan)
    with open(run_dir / "locust.out", "wb") as out, reporter.bar(
            math.ceil(planned), f"Locust: {options.protocol}, {label}") as bar:
        # Its own process group: the forked workers of --processes are ended with it (see _end_process_group).
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            cpu = _TreeCPU(process.pid)
            started = time.monotonic()
            shown = 0
            deadline = started + planned + 120  # Locust stops itself; this only guards against a hang
            while process.poll() is None:
                time.sleep(0.5)
                cpu.sample()
                elapsed = int(time.monotonic() - started)
                if elapsed > shown:
                    bar.advance(min(elapsed, math.ceil(planned)) - shown)
                    shown = min(elapsed, math.ceil(planned))
                if time.monotonic() > deadline:
                    process.kill()
                    raise LoadTestError(f"Locust did not finish within {deadline - started:.0f} s",
                                        hint=f"see {run_dir / 'locust.log'}")
        finally:
            _end_process_group(process)
    rusage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited_cpu = (rusage_after.ru_utime - rusage_before.ru_utime) + (rusage_after.ru_stime - rusage_before.ru_stime)
    client_cpu_s = max(cpu.total(), waited_cpu)
    if process.returncode not in LOCUST_OK or not (run_dir / "locust_stats.csv").exists():
        tail = (run_dir / "locust.out").read_text(errors="replace").strip().splitlines()[-5:]
        raise LoadTestError(f"Locust exited with status {process.returncode}: {' | '.join(tail) or 'no output'}",
                            hint=f"see {run_dir / 'locust.log'}")
    after, scrape_error = _scrape(metrics_url, options.tls) if scrape_error is None else (None, scrape_error)
    run = _read_stats(run_dir / "locust_stats.csv", plan.peak_users if plan else users, options.batch_size,
                      _run_seconds(run_dir / "locust_window.json"))
    if plan is not None:
        run["stage_users"] = plan.stage_users
    title = f"{options.model} over {options.protocol}, {label}, {run['duration_s']:g} s"  # of plots and server.md
    run["client_cpu_s"] = round(client_cpu_s, 3)
    run["client_cpu_ms_per_request"] = round(1000 * client_cpu_s / run["requests"], 4) if run["requests"] else None
    run["locust_exit_code"] = process.returncode
    run["slo_violations"] = options.slo.violations(run["p95_ms"], run["p99_ms"], run["error_rate"], run["requests"])
    run["top_failure"] = _top_failure(run_dir / "locust_failures.csv") if run["failures"] else None
    if before is not None and after is not None:
        per_model = metrics.delta(before, after, prefix=options.model)
        run["server"] = {model: times.summary() for model, times in per_model.items()}
        note = None
        answered = run["requests"] - run["failures"]
        counted = per_model[options.model].requests if options.model in per_model else 0
        if metrics.counters_reset(before, after) or counted < answered:
            # Triton's counters start at zero with the process: fewer requests than the client had answered means
            # the server restarted during the run (or --metrics-url points at another server).
            run["server_note"] = (f"the server restarted during the run (Triton counted {counted:.0f} of the "
                                  f"{answered} requests answered): its figures cover only the time since")
            note = run["server_note"]
        (run_dir / "server.md").write_text(metrics.server_report(per_model, title, note))
    else:
        run["server"] = None
        run["server_error"] = scrape_error
    # Workers send their counts to the master every few seconds (Locust's WORKER_REPORT_INTERVAL, 3 s).
    history = plots.read_history(run_dir / "locust_stats_history.csv", window_s=3 if options.processes > 1 else 1,
                                 last_request=_last_request(run_dir / "locust_window.json"))
    if history:
        plots.plot_timeline(history, run_dir, title)
    return run


def _scrape(url: str, tls: TlsOptions | None) -> tuple[dict | None, str | None]:
    try:
        return metrics.scrape_metrics(url, tls=tls), None
    except TritonDeployError as exc:
        return None, str(exc)


def _run_seconds(path: Path) -> float | None:
    """The run's length as the locustfile measured it: from the test's start to its last request."""
    try:
        return float(json.loads(path.read_text())["seconds"]) or None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _last_request(path: Path) -> float | None:
    """When the last request ended (epoch seconds), as the locustfile noted it."""
    try:
        return float(json.loads(path.read_text())["last_request"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_stats(path: Path, users: int, batch_size: int, seconds: float | None = None) -> dict:
    with open(path, newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    total = rows.get("Aggregated")
    if total is None:
        raise LoadTestError(f"{path} has no Aggregated row: Locust recorded no requests")
    requests, failures = int(total["Request Count"]), int(total["Failure Count"])

    def ms(column: str) -> float:
        try:
            return float(total[column])
        except (ValueError, TypeError):
            return 0.0

    # Rates over the run's measured length when there is one (Locust's Requests/s is diluted by the time workers
    # take to start), else Locust's own. A failed request is no throughput: only answered requests count there (a
    # dead server answers "connection refused" very fast).
    seconds = seconds or (requests / ms("Requests/s") if ms("Requests/s") else 0.0)
    rps = requests / seconds if seconds else 0.0
    answered_rps = rps * (requests - failures) / requests if requests else 0.0
    return {
        "users": users, "duration_s": round(seconds, 1),
        "requests": requests, "failures": failures, "error_rate": round(failures / requests, 6) if requests else 0.0,
        "requests_per_s": round(answered_rps, 3), "images_per_s": round(answered_rps * batch_size, 3),
        "failures_per_s": round(rps - answered_rps, 3),
        "p50_ms": ms("50%"), "p95_ms": ms("95%"), "p99_ms": ms("99%"), "average_ms": round(ms("Average Response Time"), 3),
        "max_ms": ms("Max Response Time"),
    }


def _top_failure(path: Path) -> str | None:
    """The error Locust counted most often, so a failed run says why (e.g. connection refused, unknown model)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    top = max(rows, key=lambda row: int(row.get("Occurrences") or 0), default=None)
    return f"{top['Error']} ({top['Occurrences']}x)" if top else None


def _end_process_group(process: subprocess.Popen, grace_s: float = 3.0) -> None:
    """Stop Locust and everything it forked. The master normally exits by itself; its workers can outlive it (a
    gRPC worker was seen hanging for good at interpreter exit, closing a channel under gevent), so what is left of
    the group after a short grace is killed. On an error or Ctrl-C the master is asked to stop first."""
    if process.poll() is None:
        process.terminate()  # Locust stops on SIGTERM and still writes its reports
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    deadline = time.monotonic() + grace_s
    while _signal_group(process.pid, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` (0: only look) to a process group; False when nothing is left in it."""
    try:
        os.killpg(pgid, signum)
        return True
    except ProcessLookupError:
        return False


class _TreeCPU:
    """CPU seconds of a process and all its descendants, sampled while they run (forked Locust workers are not
    always waited for by us, so ``RUSAGE_CHILDREN`` alone can miss them)."""

    def __init__(self, pid: int) -> None:
        self.root = pid
        self.seen: dict[int, float] = {}

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                times = process.cpu_times()
                self.seen[process.pid] = times.user + times.system
            except psutil.Error:
                continue

    def total(self) -> float:
        return sum(self.seen.values())


def level_folder(users: int) -> str:
    """The sub-folder of one sweep level."""
    return f"users-{users}"


def results_line(summary: dict, directory: Path) -> str:
    """Where a run's files are: all in ``directory``, or with a sweep one sub-folder per level."""
    per_run = "report.html, locust_*.csv, server.md, throughput.png, latency.png"
    if len(summary["runs"]) == 1:
        return f"Results in {directory} (summary.json, {per_run})"
    levels = ", ".join(f"{level_folder(r['users'])}/" for r in summary["runs"])
    return f"Results in {directory}: summary.json and sweep.png, and per level in {levels} ({per_run})"


def summary_table(summary: dict) -> str:
    lines = ["| users | seconds | requests | failures | answered req/s | images/s | p50 ms | p95 ms | p99 ms "
             "| client CPU ms/req | SLO |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in summary["runs"]:
        cpu = f"{r['client_cpu_ms_per_request']:.2f}" if r["client_cpu_ms_per_request"] is not None else "n/a"
        verdict = "broken: " + "; ".join(r["slo_violations"]) if r["slo_violations"] else "ok"
        users = " -> ".join(map(str, r["stage_users"])) if r.get("stage_users") else r["users"]  # a shape's stages
        lines.append(f"| {users} | {r['duration_s']:g} | {r['requests']} | {r['failures']} | {r['requests_per_s']:.1f} | "
                     f"{r['images_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {cpu} | "
                     f"{verdict} |")
    return "\n".join(lines)


def options_dict(options: LoadTestOptions) -> dict:
    data = asdict(options)
    return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
