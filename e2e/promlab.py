"""A real Prometheus on loopback for the test suites, and the checks of our dashboard and alerts.

Debian's ``prometheus`` package (``make system-deps``) brings the server; this module starts it
with a scrape config of the test's choosing, a temporary TSDB, ``127.0.0.1`` only, and stops it.
Home-made because no library runs a Prometheus server for tests; it is small on purpose: a config
file, a process, bounded polling of ``/-/ready``, and the HTTP API (``/api/v1/query``, ``targets``,
``rules``, ``alerts``).

The checks: every query of the dashboard (charts/tools/dashboard.py) and of the alert rules
(charts/k2think-operator/files/k2think-alerts.yaml) is evaluated over the HTTP API. A panel query
must return at least one series; an alert expression must parse and evaluate (it may return
nothing: no alert). Each query reads one source, the operator's /metrics or Ray's metrics export
port; the control-plane e2e suite proves the operator's, the data-plane suite Ray's and vLLM's.

Standard library, PyYAML and the harness's polling and port helpers: it runs in both the test
venv and .venv-dataplane (e2e/ is on sys.path there too).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.polling import wait_for
from harness.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "charts" / "k2think-operator" / "files" / "dashboards" / "k2think-fleet.json"
ALERT_RULES = ROOT / "charts" / "k2think-operator" / "files" / "k2think-alerts.yaml"
OPERATOR_JOB = "k2think-operator"

#: What Grafana would put for the dashboard's variables when "All" is picked.
ALL = {"namespace": ".*", "name": ".*", "pool": ".*"}


@dataclass(frozen=True)
class Query:
    """One PromQL query of the dashboard or of the alert rules, and the source it reads."""

    panel: str
    ref: str
    expr: str
    source: str


def source_of(expr: str) -> str:
    """``operator`` (k2think_* series), ``ray`` (Ray's exporter, incl. ray_vllm_*), or ``mixed``."""
    names = set(re.findall(r"\b(k2think_\w+|ray_[\w:]+|up)\b", expr))
    operator = {n for n in names if n.startswith("k2think_") or n == "up"}
    ray = {n for n in names if n.startswith("ray_")}
    if operator and not ray:
        return "operator"
    if ray and not operator:
        return "ray"
    return "mixed"


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def dashboard_queries(board: Mapping[str, Any]) -> list[Query]:
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets") or []:
            expr = target["expr"]
            out.append(Query(panel["title"], target["refId"], expr, source_of(expr)))
    return out


def variable_queries(board: Mapping[str, Any]) -> list[Query]:
    """Grafana's ``label_values(selector, label)`` as the PromQL a Prometheus can answer."""
    out = []
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
        assert match, f"variable {var['name']}: unsupported query {var['query']!r}"
        expr = f"group by ({match.group(2)}) ({match.group(1)})"
        out.append(Query(f"variable ${var['name']}", "var", expr, source_of(expr)))
    return out


def alert_queries(path: Path = ALERT_RULES) -> list[Query]:
    doc = yaml.safe_load(path.read_text())
    return [
        Query(rule["alert"], group["name"], rule["expr"], source_of(rule["expr"]))
        for group in doc["groups"]
        for rule in group["rules"]
    ]


def substitute(expr: str, variables: Mapping[str, str], rate_interval: str) -> str:
    """Expand Grafana's variables as Grafana would before sending the query."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    assert "$" not in expr, f"unexpanded variable in {expr!r}"
    return expr


class PromQLError(RuntimeError):
    pass


def _poll(what: str, probe: Any, timeout: float, interval: float = 0.5) -> Any:
    """The harness's bounded polling: the first truthy result; connection and PromQL errors
    (a server still starting, a series not there yet) count as "not yet"."""
    return wait_for(
        what,
        probe,
        timeout=timeout,
        interval=interval,
        max_interval=2.0,
        retry_on=(OSError, PromQLError),
        done=bool,
    )


@dataclass
class Prometheus:
    """``prometheus`` on 127.0.0.1 with a temporary TSDB; ``stop()`` removes everything."""

    scrape_configs: Sequence[Mapping[str, Any]]
    rule_files: Sequence[Path] = ()
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    binary: str = "prometheus"
    port: int = 0
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra_args: Sequence[str] = field(default_factory=tuple)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [dict(c) for c in self.scrape_configs],
        }

    def start(self, timeout: float = 60.0) -> Prometheus:
        found = shutil.which(self.binary)
        if found is None:
            raise RuntimeError("prometheus not found: run `make system-deps` (Debian prometheus)")
        self.workdir = Path(tempfile.mkdtemp(prefix="k2t-prom-"))
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        self.port = free_port()
        self.log_path = self.workdir / "prometheus.log"
        argv = [
            found,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=info",
            *self.extra_args,
        ]
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        try:
            _poll("Prometheus /-/ready", self._ready, timeout)
        except BaseException:
            self.stop(keep=True)
            raise
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, *, keep: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.workdir is not None and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP API

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return active

    def targets_up(self) -> bool:
        targets = self.targets()
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return found

    def metric_names(self) -> list[str]:
        names: list[str] = self.api("label/__name__/values")
        return names

    def wait_for_series(self, expr: str, timeout: float = 120.0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = _poll(
            f"series of {expr!r}", lambda: self.query(expr), timeout, interval=1.0
        )
        return result

    def wait_rules_evaluated(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        def evaluated() -> list[dict[str, Any]] | None:
            groups = self.rule_groups()
            rules = [r for g in groups for r in g["rules"]]
            if rules and all(r.get("lastEvaluation", "").startswith("2") for r in rules):
                return groups
            return None

        groups: list[dict[str, Any]] = _poll("every rule evaluated once", evaluated, timeout)
        return groups


# ---------------------------------------------------------------------- the checks


def unanswered(
    prom: Prometheus,
    queries: Iterable[Query],
    *,
    variables: Mapping[str, str] = ALL,
    rate_interval: str = "5m",
    need_series: bool = True,
) -> list[str]:
    """Every query that fails to evaluate (or, with ``need_series``, returns no series),
    as ``"panel [ref]: reason -- expr"`` lines; empty when all are answered."""
    problems = []
    for q in queries:
        expr = substitute(q.expr, variables, rate_interval)
        try:
            result = prom.query(expr)
        except PromQLError as error:
            problems.append(f"{q.panel} [{q.ref}]: does not evaluate: {error} -- {expr}")
            continue
        if need_series and not result:
            problems.append(f"{q.panel} [{q.ref}]: no series -- {expr}")
    return problems


def rule_problems(groups: Iterable[Mapping[str, Any]], expected: Iterable[str]) -> list[str]:
    """Rules Prometheus did not load, or whose last evaluation failed."""
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    problems = [f"{name}: not loaded" for name in expected if name not in loaded]
    for name, rule in sorted(loaded.items()):
        if rule.get("health") != "ok" or rule.get("lastError"):
            problems.append(f"{name}: health {rule.get('health')}: {rule.get('lastError')}")
    return problems
