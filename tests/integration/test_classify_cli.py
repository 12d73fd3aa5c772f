"""``triton-deploy classify`` against the real local server: output lines, --json, exit codes, and a bad file
reported by name on stderr while the other files still print."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import encode_digit
from triton_deploy.cli import main
from triton_deploy.server import free_ports

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture()
def digit_folder(tmp_path, heldout_digits):
    images, labels = heldout_digits
    folder = tmp_path / "digits"
    (folder / "nested").mkdir(parents=True)
    for i in range(24):
        target = folder / "nested" if i % 5 == 0 else folder
        fmt = "PNG" if i % 2 else "JPEG"
        (target / f"{i:02d}_{labels[i]}.{fmt.lower()}").write_bytes(encode_digit(images[i], 40 + i, fmt))
    (folder / "README.txt").write_text("not an image and not picked up from a folder")
    return folder


def test_classify_a_folder_prints_one_line_per_image_and_exits_0(triton_server, digit_folder, capsys):
    code = main(["classify", str(digit_folder), "--url", triton_server.grpc_url, "--protocol", "grpc",
                 "--top-k", "2", "--quiet"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) == 24
    correct = sum(line.split("\t")[1].split()[0] == line.split("/")[-1].split("_")[1].split(".")[0] for line in out)
    assert correct >= 22
    assert all(len(line.split("\t")[1].split("  ")) == 2 for line in out)


def test_classify_json_gives_one_object_per_image(triton_server, digit_folder, capsys):
    code = main(["classify", f"{digit_folder}/**/*.png", "--url", triton_server.http_url, "--json", "--quiet",
                 "--batch-size", "5", "--concurrency", "2", "--shared-memory", "--admin-key", triton_server.admin_key])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    records = [json.loads(line) for line in lines]
    assert len(records) == 12
    assert [r["source"] for r in records] == sorted(r["source"] for r in records)
    assert all(len(r["predictions"]) == 5 and r["predictions"][0]["rank"] == 1 for r in records)


def test_a_bad_file_is_reported_by_name_while_the_others_print(triton_server, digit_folder, capsys):
    bad = digit_folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    missing = digit_folder / "missing.jpg"
    code = main(["classify", str(digit_folder), str(missing), "--url", triton_server.http_url, "--json"])
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert code == 37
    assert sum("predictions" in r for r in records) == 24
    assert {r["source"] for r in records if "error" in r} == {str(bad), str(missing)}
    assert f"{bad}:" in captured.err and f"{missing}: cannot read the file" in captured.err
    assert "2 of 26 images could not be classified" in captured.err
    assert "Classifying" in captured.err  # the progress bar for a folder of more than a few images


def test_classify_exit_codes_for_usage_and_connection_errors(triton_server, tmp_path, digit_folder, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["classify", str(empty), "--url", triton_server.http_url]) == 2
    assert "no image files found" in capsys.readouterr().err
    (port,) = free_ports(1)
    code = main(["classify", str(digit_folder), "--url", f"127.0.0.1:{port}", "--ready-timeout", "1",
                 "--retries", "0", "--quiet"])
    assert code == 30
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["classify", str(digit_folder), "--url", triton_server.http_url, "--model", "nope", "-q"]) == 31
    assert main(["classify", str(digit_folder), "--url", triton_server.http_url, "--top-k", "9", "-q"]) == 33


def test_classify_into_a_pipe_whose_reader_left_exits_141_without_a_traceback(triton_server, digit_folder):
    # `triton-deploy classify ... | head`: here the reader leaves before the first line, so the first write fails.
    process = subprocess.Popen([sys.executable, "-m", "triton_deploy.cli", "classify", str(digit_folder), "--url",
                                triton_server.http_url, "--batch-size", "1", "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141, err  # 128 + SIGPIPE, as coreutils' tools report it
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


def test_client_preprocessing_reads_the_open_config_or_takes_the_exports_manifest(triton_server, digits_export,
                                                                                  digit_folder, capsys):
    argv = ["classify", str(digit_folder), "--url", triton_server.http_url, "--preprocess", "client", "--json", "-q"]
    # The configuration is open without a key (as Triton's own clients read it), so no key and no manifest are needed;
    # a manifest gives the same preprocessing.
    for extra in ([], ["--manifest", str(digits_export / "manifest.json")]):
        assert main([*argv, "--admin-key", "", *extra]) == 0
        records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        correct = [r["predictions"][0]["label"] == r["source"].split("_")[-1].split(".")[0] for r in records]
        assert len(records) == 24 and sum(correct) >= 22
