"""The shipped deployment files with real nginx, Prometheus and systemd tools, in front of real servers.

nginx and Prometheus run from Debian's packages (installed by .ci/run); the
test only rewrites ports (and, for the TLS variant, the certificate paths).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.harness import EVAL_DIR, REPO, ServerProcess, wait_until, wav_bytes

from .conftest import KEY, exchange, request
from .test_spec_clients import adapt, spec_example

DEPLOY = REPO / "deploy"
HALF_SECOND = wav_bytes(np.zeros(8000, dtype=np.int16), 16_000)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def backends() -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {"ASR_BEAM_SIZE": "1", "SERVER_API_KEY": KEY}
    with ServerProcess(env=env) as first, ServerProcess(env=env) as second:
        yield first, second


class Nginx:
    """Debian's nginx with a site file from deploy/nginx, in a private prefix."""

    def __init__(self, site: str, tmp: Path, replacements: dict[str, str]) -> None:
        text = (DEPLOY / "nginx" / site).read_text()
        for old, new in replacements.items():
            assert old in text, old
            text = text.replace(old, new)
        (tmp / "site.conf").write_text(text)
        temp = "\n".join(f"  {kind}_temp_path {tmp}/{kind};" for kind in
                         ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (tmp / "nginx.conf").write_text(
            f"worker_processes 1;\nerror_log {tmp}/error.log warn;\npid {tmp}/nginx.pid;\n"
            f"events {{ worker_connections 512; }}\n"
            f"http {{\n  access_log off;\n{temp}\n  include {tmp}/site.conf;\n}}\n")
        self.tmp = tmp
        self.proc = subprocess.Popen(["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                                      "-g", "daemon off;"])

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nginx", "-t", "-p", str(self.tmp), "-c", str(self.tmp / "nginx.conf")],
                              capture_output=True, text=True)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def ports(first: ServerProcess, second: ServerProcess, listen: int) -> dict[str, str]:
    return {"listen 80;": f"listen {listen};", "127.0.0.1:8765": f"127.0.0.1:{first.port}",
            "127.0.0.1:8775": f"127.0.0.1:{second.port}",
            "127.0.0.1:8766": f"127.0.0.1:{first.metrics_port}",
            "127.0.0.1:8776": f"127.0.0.1:{second.metrics_port}",
            "127.0.0.1:8767": f"127.0.0.1:{first.http_port}",
            "127.0.0.1:8777": f"127.0.0.1:{second.http_port}"}


class Prometheus:
    """Debian's Prometheus with deploy/prometheus's config, scraping every second."""

    def __init__(self, tmp: Path, targets: list[str]) -> None:
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
        config["scrape_configs"][0]["static_configs"][0]["targets"] = targets
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        deadline = time.monotonic() + 60
        while True:  # it listens before its storage is open, and answers 503 until then
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "Prometheus never became ready"
            time.sleep(0.2)

    def series(self, promql: str) -> list[tuple[dict[str, str], float]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body: dict[str, Any] = json.load(resp)
        assert body["status"] == "success", body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def query(self, promql: str) -> dict[str, float]:
        """For queries whose result has one series per machine_id."""
        return {labels["machine_id"]: value for labels, value in self.series(promql)}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_prometheus_answers_the_spec_promql(backends: tuple[ServerProcess, ServerProcess],
                                            tmp_path: Path) -> None:
    first, second = backends
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{first.metrics_port}", f"127.0.0.1:{second.metrics_port}"])
    try:
        wait_until(lambda: len(prometheus.series('up{job="asr-server"} == 1')) == 2, 60,
                   "Prometheus to scrape both backends", interval_s=0.5)

        def scraped(totals: dict[str, float]) -> None:
            wait_until(lambda: prometheus.query("sum by (machine_id) (asr_requests_total)") == totals, 60,
                       f"Prometheus to scrape the request totals {totals}", interval_s=0.5)

        sent: dict[str, float] = {}
        # Two waves, the second sent once Prometheus has scraped the first, so it sees the counters
        # rise (aa01 from 1 to 2 on the first backend).
        for wave in ({"aa01": 1, "bb02": 1, "cc03": 1}, {"aa01": 2, "bb02": 1}):
            for machine_id, count in wave.items():
                for i in range(count):
                    target = (first, second)[i % 2]
                    assert exchange(target.url, request("en", machine_id=machine_id), HALF_SECOND
                                    ).reply["text"] == ""
                sent[machine_id] = sent.get(machine_id, 0.0) + count
            scraped(dict(sent))
        minutes = prometheus.query("sum by (machine_id) (asr_audio_seconds_total) / 60")
        assert minutes == pytest.approx({k: v * 0.5 / 60 for k, v in sent.items()})
        rates = prometheus.series("rate(asr_requests_total[1h])")
        assert {labels["machine_id"] for labels, _ in rates} == set(sent)
        assert all(labels["status"] == "ok" and value >= 0 for labels, value in rates)
        # aa01 rose from 1 to 2 on the first backend between the waves.
        assert any(labels["machine_id"] == "aa01" and value > 0 for labels, value in rates), rates
        averages = prometheus.series(
            "rate(asr_processing_seconds_sum[5m]) / rate(asr_processing_seconds_count[5m])")
        finite = [value for _, value in averages if value == value]  # NaN where a series did not move
        assert finite and all(0 < v < 10 for v in finite), averages
        # Every query of the shipped Grafana dashboard is valid PromQL (series() checks the
        # answer's status) and finds data, but for those about errors and the LLM, of which
        # this run has none.
        dashboard = json.loads((DEPLOY / "grafana" / "asr-server-dashboard.json").read_text())
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                found = prometheus.series(target["expr"])
                if "postprocess" not in target["expr"] and 'status!="ok"' not in target["expr"]:
                    assert found, (panel["title"], target["expr"])
    finally:
        prometheus.stop()


def test_alert_rules_pass_promtool() -> None:
    result = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "4 rules found" in result.stdout, result.stdout + result.stderr


def test_spec_client_through_nginx_and_failover(backends: tuple[ServerProcess, ServerProcess],
                                                tmp_path: Path) -> None:
    first, second = backends
    listen = free_port()
    nginx = Nginx("asr-server.conf", tmp_path, ports(first, second, listen))
    try:
        wait_for_port(listen)
        base = f"ws://127.0.0.1:{listen}/ws/transcribe"
        jfk = repr(str(EVAL_DIR / "en/en_whisper_jfk.wav"))
        code = adapt(spec_example("python"), base, ('"recording.wav"', jfk),
                     ('"language": "bg"', '"language": "en"'))
        (tmp_path / "client.py").write_text(code)
        for _ in range(2):  # least_conn: both backends serve
            out = subprocess.run([sys.executable, str(tmp_path / "client.py")], capture_output=True,
                                 text=True, timeout=300, check=True).stdout
            assert "your country" in out
        status = urllib.request.urlopen(f"http://127.0.0.1:{listen}/health", timeout=10).status
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{listen}/metrics", timeout=10).read().decode()
        assert status == 200 and "asr_requests_total" in metrics
        assert urllib.request.urlopen(f"http://127.0.0.1:{listen}/metrics/gpu1", timeout=10).status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/", timeout=10) as page:  # the browser page
            assert page.status == 200 and "Content-Security-Policy" in page.headers
            assert "/ws/transcribe" in page.read().decode()
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{listen}/elsewhere", timeout=10)
        assert info.value.code == 404
        # The OpenAI-compatible API behind the same site: the upload streams through to /v1/.
        api = openai.OpenAI(base_url=f"http://127.0.0.1:{listen}/v1", api_key=KEY, max_retries=0, timeout=300)
        assert [m.id for m in api.models.list()] == ["base"]
        jfk_wav = (EVAL_DIR / "en/en_whisper_jfk.wav").read_bytes()
        text = api.audio.transcriptions.create(model="whisper-1", file=("jfk.wav", jfk_wav), language="en",
                                               response_format="text")
        assert "your country" in text
        # Live dictation's WebSocket upgrade passes through the same /v1/ location.
        with api.realtime.connect(extra_query={"intent": "transcription"}) as live:
            assert live.recv().type == "session.created"

        second.stop()  # one backend dies; nginx must route around it
        for _ in range(4):
            reply = exchange(base, request("en"), (EVAL_DIR / "en/en_whisper_jfk.wav").read_bytes()).reply
            assert "your country" in reply["text"], reply
    finally:
        nginx.stop()


def test_nginx_limits_each_client_at_the_edge(backends: tuple[ServerProcess, ServerProcess],
                                              tmp_path: Path) -> None:
    """The shipped limit_conn: 20 open connections per client address; the 21st gets 429."""
    first, second = backends
    live = first if first.proc and first.proc.poll() is None else second
    listen = free_port()
    nginx = Nginx("asr-server.conf", tmp_path, ports(live, live, listen))
    try:
        wait_for_port(listen)
        url = f"ws://127.0.0.1:{listen}/ws/transcribe"
        with ExitStack() as idle:
            for _ in range(20):
                idle.enter_context(connect(url, open_timeout=10))
            with pytest.raises(InvalidStatus) as refused:
                connect(url, open_timeout=10)
            assert refused.value.response.status_code == 429
        deadline = time.monotonic() + 10
        while True:  # once they close, the client is let in again
            try:
                assert exchange(url, {"type": "ping"}).reply["type"] == "pong"
                break
            except InvalidStatus:
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        nginx.stop()


def test_tls_variant_serves_wss(backends: tuple[ServerProcess, ServerProcess], tmp_path: Path) -> None:
    first, second = backends
    live = first if first.proc and first.proc.poll() is None else second
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    https = free_port()
    replacements = {**ports(live, live, free_port()), "listen 443 ssl;": f"listen {https} ssl;",
                    "/etc/ssl/certs/asr-server.crt": str(tmp_path / "cert.pem"),
                    "/etc/ssl/private/asr-server.key": str(tmp_path / "key.pem")}
    nginx = Nginx("asr-server-tls.conf", tmp_path, replacements)
    try:
        assert nginx.check().returncode == 0
        wait_for_port(https)
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        context.check_hostname = False
        with connect(f"wss://127.0.0.1:{https}/ws/transcribe", ssl=context) as ws:
            ws.send(json.dumps({"type": "ping"}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "pong", "status": "ok"}
    finally:
        nginx.stop()


def test_systemd_unit_verifies() -> None:
    assert shutil.which("systemd-analyze"), "Debian's systemd package provides systemd-analyze"
    unit = (REPO / "systemd" / "asr-server.service").read_text().replace("/opt/asr-server", str(REPO))
    with_prefix = Path("/tmp") / f"asr-server-verify-{time.monotonic_ns()}" / "asr-server.service"
    with_prefix.parent.mkdir()
    with_prefix.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(with_prefix)], capture_output=True, text=True)
    shutil.rmtree(with_prefix.parent)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    assert "Type=notify" in unit and "TimeoutStopSec=45" in unit
    # Whisper's Triton kernels (word timestamps on CUDA) are cached where the hardened unit may write:
    # its CacheDirectory (%C/asr-server), not $HOME, which DynamicUser= and ProtectHome= close.
    environment = dict(pair.split("=", 1) for line in unit.splitlines() if line.startswith("Environment=")
                       for pair in line.removeprefix("Environment=").split())
    assert "CacheDirectory=asr-server" in unit and "ProtectHome=yes" in unit
    assert environment["TRITON_CACHE_DIR"].startswith("%C/asr-server/")
