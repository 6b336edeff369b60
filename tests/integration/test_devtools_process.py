"""``ServiceProcess`` and the ports it uses, against real processes and real sockets: ports read
from the start line, readiness, output kept and echoed, stop and kill, the exit code, a taken
port retried, and the three ways of holding a port."""

from __future__ import annotations

import signal
import socket
import sys
import threading

import pytest

from chat_devtools.errors import PortInUse, ServiceError
from chat_devtools.ports import closed_port, port_free, reserve_port, retry_on_port_in_use
from chat_devtools.process import (
    PICK,
    ServiceProcess,
    http_get,
    http_ok,
    json_ports,
    printed,
    tied_to_parent,
)
from chat_devtools.supervisor import Supervised
from tests.conftest import ROOT

DEMO = [sys.executable, str(ROOT / "tests" / "support" / "demo_service.py")]


def demo(tmp_path, name: str = "demo", **env: str) -> ServiceProcess:
    # A generous grace: on a loaded CI machine a clean exit (coverage data written at exit
    # included) once outlasted 5 s and was SIGKILLed; the kill path has its own test.
    return ServiceProcess(name, DEMO, env={"PATH": "/usr/bin:/bin", **env}, ready=http_ok(
        "/readyz", port_key="http_port"), log_path=tmp_path / f"{name}.log", grace=30)


def test_json_ports_reads_the_non_zero_ports_of_a_json_line() -> None:
    line = '{"msg": "api_started", "grpc_port": 4100, "http_port": 0, "metrics_port": true}'
    assert json_ports(line) == {"grpc_port": 4100}
    assert json_ports("grpc_port=4100") == {}
    assert json_ports('{"broken": "grpc_port"') == {}


def test_ports_readiness_output_and_a_clean_stop(tmp_path) -> None:
    echoed: list[str] = []
    proc = ServiceProcess("demo", DEMO, env={"PATH": "/usr/bin:/bin"},
                          ready=http_ok("/readyz", port_key="http_port"),
                          log_path=tmp_path / "demo.log", echo=echoed.append)
    with proc:
        proc.wait_ready(30)
        port = proc.ports["http_port"]
        assert set(proc.ports) == {"http_port"}  # zero ports are not ports
        assert http_get(port, "/healthz")[0] == 200
        assert proc.output("stderr") == "a line on stderr\n"
        assert '"demo_started"' in proc.output("stdout")
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not proc.killed
    assert '"demo_stopped"' in proc.output("stdout")
    assert f'"http_port": {port}' in (tmp_path / "demo.log").read_text()
    assert f'demo  | {{"msg": "demo_started", "http_port": {port}' in "\n".join(echoed)


def test_a_process_that_ignores_sigterm_is_killed_after_its_grace(tmp_path) -> None:
    proc = demo(tmp_path, IGNORE_SIGTERM="1").start().wait_ready(30)
    assert proc.stop(grace=0.5) == -signal.SIGKILL
    assert proc.killed and not proc.running


def test_an_exit_before_ready_is_an_error_with_the_code_and_the_output(tmp_path) -> None:
    proc = demo(tmp_path, EXIT_CODE="2").start()
    with pytest.raises(ServiceError, match=r"exit code 2\):\ndemo: BAD_SETTING") as exc:
        proc.wait_ready(30)
    assert not isinstance(exc.value, PortInUse)
    assert proc.returncode == 2


def test_a_taken_picked_port_is_retried_on_another(tmp_path) -> None:
    proc = demo(tmp_path, PORT=PICK, FAIL_FIRST=str(tmp_path / "failed-once")).start()
    first = proc.env["PORT"]
    with proc:
        proc.wait_ready(30)
        assert (tmp_path / "failed-once").exists()  # the first run did fail
        assert proc.ports["http_port"] == int(proc.env["PORT"])
    log = (tmp_path / "demo.log").read_text()
    assert "Address already in use" in log and '"demo_started"' in log
    assert first.isdigit()


def test_without_picked_ports_a_taken_port_is_the_callers_to_retry(tmp_path) -> None:
    proc = demo(tmp_path, FAIL_FIRST=str(tmp_path / "failed-once")).start()
    with pytest.raises(PortInUse):
        proc.wait_ready(30)
    calls: list[PortInUse] = []

    def start_again() -> ServiceProcess:
        return demo(tmp_path, FAIL_FIRST=str(tmp_path / "failed-twice")).start().wait_ready(30)

    with retry_on_port_in_use(start_again, on_retry=calls.append) as again:
        assert again.running and len(calls) == 1


def test_printed_waits_for_a_line_of_output(tmp_path) -> None:
    proc = ServiceProcess("demo", DEMO, env={"PATH": "/usr/bin:/bin"},
                          ready=printed("a line on stderr"))
    with proc:
        proc.wait_ready(30)
        assert "a line on stderr" in proc.output()


def test_a_missing_program_is_refused_at_start_as_popen_refuses_it(tmp_path) -> None:
    # The started command is wrapped (tied_to_parent), so the check is ServiceProcess's own.
    proc = ServiceProcess("missing", [str(tmp_path / "no-such-program")])
    with pytest.raises(FileNotFoundError):
        proc.start()
    assert not proc.running
    named = ServiceProcess("missing", ["no-such-program-anywhere"], env={"PATH": "/usr/bin"})
    with pytest.raises(FileNotFoundError):
        named.start()


def test_a_started_process_is_tied_to_this_one_from_the_main_thread_only() -> None:
    assert tied_to_parent(["redis-server"], signal.SIGINT)[-4:] == [
        "--pdeathsig", "INT", "--", "redis-server"]
    from_thread: list[list[str]] = []
    worker = threading.Thread(
        target=lambda: from_thread.append(tied_to_parent(["redis-server"], signal.SIGTERM)))
    worker.start()
    worker.join(10)
    assert from_thread == [["redis-server"]]


def test_a_reserved_port_is_shared_with_so_reuseport_and_refused_to_others() -> None:
    held = reserve_port()
    port = held.getsockname()[1]
    with held, socket.socket() as sharing, socket.socket() as other:
        sharing.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sharing.bind(("127.0.0.1", port))
        sharing.listen()
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        # Connections go to the listener only.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            conn, _ = sharing.accept()
            conn.close()


def test_a_closed_port_refuses_connections() -> None:
    with closed_port() as port:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        assert not port_free("127.0.0.1", port)


def test_port_free_ignores_time_wait_but_not_a_listener() -> None:
    with socket.socket() as listener:
        # SO_REUSEADDR as every service's listener sets it (gRPC, aiohttp, prometheus_client);
        # the connections it accepted inherit it, and so do their TIME_WAIT remains.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free("127.0.0.1", port)
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        served, _ = listener.accept()
        served.close()  # the server side closes first: its end waits in TIME_WAIT
        client.recv(1)
        client.close()
    with socket.socket() as plain:  # what a check without SO_REUSEADDR would see
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert port_free("127.0.0.1", port)


def test_supervised_restarts_a_crashed_process_and_says_so(tmp_path) -> None:
    said: list[str] = []
    restarted = threading.Event()

    def say(text: str) -> None:
        said.append(text)
        if "ready again" in text:
            restarted.set()

    service = Supervised(demo(tmp_path), say)
    service.start()
    service.wait_ready()
    first = service.process.pid
    service.process.signal(signal.SIGKILL)
    assert restarted.wait(30), said
    assert said[0] == "demo exited with code -9; restarting in 1s (restart 1)"
    assert said[1] == f"demo ready again (pid {service.process.pid})"
    assert service.process.pid != first
    assert service.stop() == 0, (service.process.killed, said,
                                 (tmp_path / "demo.log").read_text()[-2000:])
    assert service.restarts == 1
