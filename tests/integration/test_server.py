"""The generated repository served by the real Triton server: accuracy through the ensemble over HTTP and gRPC,
dynamic batching, a bad image failing alone, restricted admin APIs, and ``serve``'s start-up errors and shutdown."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import encode_digit
from triton_deploy.errors import ServerError
from triton_deploy.server import ServerInstallation, ServerOptions, TritonServer, free_ports, server_command

pytestmark = [pytest.mark.slow, pytest.mark.server]

FORMATS = [(32, "PNG"), (64, "JPEG"), (100, "PNG"), (48, "BMP"), (128, "WEBP")]


def infer(module, client, blobs: list[bytes], model: str = "digits"):
    image = module.InferInput("IMAGE", [len(blobs), 1], "BYTES")
    image.set_data_from_numpy(np.array(blobs, dtype=np.object_).reshape(-1, 1))
    result = client.infer(model, [image])
    return result.as_numpy("CLASS_IDS"), result.as_numpy("SCORES"), result.as_numpy("LABELS")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_ensemble_classifies_held_out_digits_accurately(protocol, triton_server, heldout_digits):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(triton_server.http_url if protocol == "http" else triton_server.grpc_url)
    images, labels = heldout_digits
    count = 160
    blobs = [encode_digit(images[i], *FORMATS[i % len(FORMATS)]) for i in range(count)]
    predicted = []
    for start in range(0, count, 16):  # batched requests of mixed formats and sizes
        ids, scores, names = infer(module, client, blobs[start:start + 16])
        assert ids.shape == scores.shape == names.shape == (len(blobs[start:start + 16]), 5)
        assert np.all(np.diff(scores, axis=1) <= 0) and np.all(scores[:, 0] > 0)  # best first
        assert [n.decode() for n in names[:, 0]] == [str(i) for i in ids[:, 0]]  # labels match class ids
        predicted.extend(ids[:, 0].tolist())
    accuracy = float(np.mean(np.array(predicted) == labels[:count]))
    assert accuracy >= 0.95, f"{protocol} accuracy {accuracy:.3f}"


def test_concurrent_requests_are_batched(triton_server, heldout_digits):
    images, _ = heldout_digits
    stats_client = grpcclient.InferenceServerClient(triton_server.grpc_url)

    def counts():
        stats = stats_client.get_inference_statistics("digits_classifier", as_json=True)["model_stats"][0]
        return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))

    before = counts()
    blobs = [encode_digit(images[i]) for i in range(64)]

    def one(blob):
        return infer(grpcclient, grpcclient.InferenceServerClient(triton_server.grpc_url), [blob])[0][0, 0]

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, blobs))
    inferences, executions = (a - b for a, b in zip(counts(), before))
    assert inferences == 64
    assert executions < inferences, f"{executions} executions for {inferences} inferences: no batching"


def test_an_undecodable_image_fails_alone_in_a_concurrent_burst(triton_server, heldout_digits):
    images, labels = heldout_digits
    bad = {3: b"this is text, not an image", 9: encode_digit(images[9])[:40]}

    def one(i):
        blob = bad.get(i) or encode_digit(images[i])
        try:
            return infer(grpcclient, grpcclient.InferenceServerClient(triton_server.grpc_url), [blob])[0][0, 0]
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(32)))
    failures = {i for i, r in enumerate(results) if isinstance(r, InferenceServerException)}
    assert failures == set(bad)
    assert "not a supported image format" in str(results[3]) and "image 0 of the request" in str(results[3])
    assert "INVALID_ARG" in str(results[3].status())
    good = [i for i in range(32) if i not in bad]
    assert np.mean([results[i] == labels[i] for i in good]) >= 0.9
    # The server keeps serving after bad input.
    assert infer(httpclient, httpclient.InferenceServerClient(triton_server.http_url),
                 [encode_digit(images[0])])[0][0, 0] == labels[0]


def test_admin_apis_need_the_key(triton_server):
    client = httpclient.InferenceServerClient(triton_server.http_url)
    with pytest.raises(InferenceServerException, match="restricted|This API is restricted"):
        client.get_model_config("digits")
    config = client.get_model_config("digits", headers={"triton-admin-key": triton_server.admin_key})
    assert config["platform"] == "ensemble"
    assert client.get_model_metadata("digits")["inputs"][0]["name"] == "IMAGE"  # metadata stays open


def test_port_in_use_is_one_clear_error(digits_repository):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        grpc_port, metrics_port = free_ports(2)
        with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 is already in use .choose another --http-port"):
            TritonServer(ServerOptions(digits_repository, http_port=port, grpc_port=grpc_port,
                                       metrics_port=metrics_port)).start()


def test_a_model_that_fails_to_load_is_named_with_tritons_reason(digits_repository, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(digits_repository, broken)
    (broken / "digits_classifier" / "1" / "model.onnx").write_bytes(b"corrupt")
    http, grpc, metrics = free_ports(3)
    server = TritonServer(ServerOptions(broken, http_port=http, grpc_port=grpc, metrics_port=metrics,
                                        ready_timeout_s=90))
    with pytest.raises(ServerError) as info:
        with server:
            pass
    message = str(info.value)
    assert "failed to load model 'digits_classifier' version 1" in message
    assert server.process.poll() is not None  # nothing left running


def test_serve_command_drains_on_sigterm_and_exits_zero(digits_repository, tmp_path):
    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "triton_deploy.cli", "serve", "--repository", str(digits_repository),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--json",
               "--exit-timeout", "5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    key_file = tmp_path / ".triton-deploy" / f"admin-key-{http}"
    try:
        endpoints = json.loads(process.stdout.readline())  # printed once the server is ready
        assert endpoints["http"] == f"127.0.0.1:{http}"
        client = httpclient.InferenceServerClient(endpoints["http"])
        assert client.is_server_ready()
        # The random admin key is where serve said, readable by its owner only, and it unlocks the admin APIs.
        key = key_file.read_text().strip()
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert client.get_model_config("digits", headers={"triton-admin-key": key})["name"] == "digits"
        client.close()
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)
        assert process.returncode == 0
    finally:
        if process.poll() is None:  # an assertion failed first: SIGTERM so serve stops its Triton (SIGKILL orphans it)
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    time.sleep(0.2)
    assert not _listening(http)
    assert f"Admin key (header triton-admin-key): random, in .triton-deploy/admin-key-{http} (removed on exit), " \
           "readable by you only" in err
    assert key not in err and not key_file.exists()
    # The wheel's Triton cannot cap HTTP request bodies: --json says so with null, and serve says it in one line.
    assert endpoints["http_max_input_size"] is None
    (warning,) = [line for line in err.splitlines() if "cap HTTP request bodies" in line]
    assert warning.startswith("triton-deploy serve: warning: this Triton (2.51.0) cannot cap HTTP request bodies")
    assert "the Helm chart's image does" in warning and "proxy that caps request bodies" in warning


# ---- the HTTP request-body cap: passed only to a binary that has the flag -------------------------------------


def stand_in_binary(tmp_path: Path, real: ServerInstallation, extra_help: str) -> tuple[Path, Path]:
    """A 'tritonserver' that prints the real 2.51 --help text plus ``extra_help`` and counts how often it ran."""
    result = subprocess.run([str(real.binary), "--help"], env=real.environment(), capture_output=True, text=True,
                            timeout=60)
    help_file, runs = tmp_path / "help.txt", tmp_path / "runs"
    help_file.write_text(result.stdout + result.stderr + extra_help)
    binary = tmp_path / "tritonserver"
    binary.write_text(f'#!/bin/sh\necho run >> "{runs}"\ncat "{help_file}"\nexit 1\n')
    binary.chmod(0o755)
    return binary, runs


def test_the_wheels_triton_lacks_the_http_body_cap_so_serve_does_not_pass_it():
    real = ServerInstallation.discover()
    assert real.supports("--http-restricted-api") and real.supports("--exit-timeout-secs")  # --help was read
    assert not real.supports("--http-max-input-size")
    command = server_command(ServerOptions(repository=Path("repo")), real, admin_key="KEY")
    assert not [arg for arg in command if arg.startswith("--http-max-input-size")]
    server = TritonServer(ServerOptions(repository=Path("repo")), installation=real)
    assert server.http_max_input_size is None


def test_a_triton_with_the_flag_gets_the_cap_and_its_help_is_read_once(tmp_path):
    real = ServerInstallation.discover()
    newer = "  --http-max-input-size <integer>\n\tMaximum allowed HTTP request input size in bytes.\n"
    binary, runs = stand_in_binary(tmp_path, real, newer)
    installation = ServerInstallation(binary, real.library_dir, real.backend_dir)
    default = server_command(ServerOptions(repository=Path("repo")), installation, admin_key="KEY")
    assert "--http-max-input-size=33554432" in default  # 32 MiB, the preprocess model's per-image max_bytes
    smaller = server_command(ServerOptions(repository=Path("repo"), http_max_input_size=1 << 20), installation,
                             admin_key="KEY")
    assert [arg for arg in smaller if arg.startswith("--http-max-input-size")] == ["--http-max-input-size=1048576"]
    assert TritonServer(ServerOptions(repository=Path("repo")), installation=installation).http_max_input_size == \
        32 * 1024 * 1024
    assert runs.read_text().count("run") == 1, "the binary's --help is read once per installation"
    # A binary without the flag in its help (the real one's text, run the same way) gets no cap.
    (tmp_path / "plain").mkdir()
    plain_binary, _ = stand_in_binary(tmp_path / "plain", real, "")
    plain = ServerInstallation(plain_binary, real.library_dir, real.backend_dir)
    assert not [a for a in server_command(ServerOptions(repository=Path("repo")), plain, admin_key="KEY")
                if a.startswith("--http-max-input-size")]


def test_serve_takes_the_cap_as_a_positive_byte_count(capsys):
    from triton_deploy.cli import build_parser

    assert build_parser().parse_args(["serve"]).http_max_input_size == 32 * 1024 * 1024
    assert build_parser().parse_args(["serve", "--http-max-input-size", "1048576"]).http_max_input_size == 1048576
    for bad in ("0", "-5", "32MiB"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", "--http-max-input-size", bad])
    assert "--http-max-input-size" in capsys.readouterr().err


def test_background_serve_and_stop(digits_repository, tmp_path, capsys):
    from triton_deploy.cli import main

    repository = tmp_path / "model_repository"  # a copy: the stubs' bytecode is checked in this test alone
    shutil.copytree(digits_repository, repository, ignore=shutil.ignore_patterns("__pycache__"))
    http, grpc, metrics = free_ports(3)
    pid_file = tmp_path / "serve.json"
    assert main(["serve", "--repository", str(repository), "--http-port", str(http), "--grpc-port", str(grpc),
                 "--metrics-port", str(metrics), "--background", "--pid-file", str(pid_file)]) == 0
    state = json.loads(pid_file.read_text())
    err = " ".join(capsys.readouterr().err.split())
    assert f'Admin key (header triton-admin-key): random, in the "admin_key" field of {pid_file}' in err
    assert state["admin_key"] not in err and pid_file.stat().st_mode & 0o777 == 0o600
    assert httpclient.InferenceServerClient(state["http"]).is_model_ready("digits")
    assert sorted(repository.glob("*/1/__pycache__"))  # the stubs cache bytecode while serving...
    # A second background server on the same state file would orphan the first: refused before it starts, by name.
    ports = [str(p) for p in free_ports(3)]
    assert main(["serve", "--repository", str(repository), "--http-port", ports[0], "--grpc-port", ports[1],
                 "--metrics-port", ports[2], "--background", "--pid-file", str(pid_file), "-q"]) == 9
    assert (f"a background server is already running (pid {state['pid']}, HTTP {state['http']}, repository "
            f"{repository}; recorded in {pid_file}) (stop it with 'triton-deploy stop --pid-file {pid_file}'"
            in capsys.readouterr().err)
    assert json.loads(pid_file.read_text()) == state and not _listening(int(ports[0]))
    assert main(["stop", "--pid-file", str(pid_file), "-q"]) == 0
    assert not pid_file.exists() and not _listening(http)
    # ...and none is left once stopped: `make demo` then `make test` compares the committed repository with a fresh one
    assert not sorted(repository.rglob("__pycache__"))
    assert main(["stop", "--pid-file", str(pid_file)]) == 9
    assert "no background server to stop" in capsys.readouterr().err


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "triton.internal"])
def test_an_exposed_serve_without_a_body_cap_is_refused_before_starting(digits_repository, host, capsys):
    from triton_deploy.cli import main

    code = main(["serve", "--repository", str(digits_repository), "--host", host])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--host {host} exposes the server, but this Triton cannot cap HTTP request bodies" in err
    assert "--allow-uncapped-http" in err  # the way out, named


def test_loopback_hosts_count_as_not_exposed():
    from triton_deploy.server import is_loopback as _is_loopback

    assert all(_is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))
