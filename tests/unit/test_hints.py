"""Hints that send the user the right way (issue 24 item 14), without a server: the words Triton 2.51 answers with
for an unserved version (captured from the real server over HTTP and gRPC), a URL without a port."""

from __future__ import annotations

import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from triton_deploy.cli import main
from triton_deploy.clients.errors import InvalidInputError, ModelNotFoundError, translate
from triton_deploy.clients.transport import Connection


@pytest.mark.parametrize("status", ["404", "StatusCode.NOT_FOUND"])
def test_an_unserved_version_points_at_the_version_policy_not_the_model_name(status):
    exc = InferenceServerException("Request for unknown model: 'digits_classifier' version 1 is not found", status)
    error = translate(exc, url="127.0.0.1:8001", model="digits_classifier")
    assert isinstance(error, ModelNotFoundError)
    assert "does not serve version 1 of 'digits_classifier'" in str(error)
    assert "version policy" in error.hint and "--model-version" in error.hint and "check --model)" not in str(error)
    unknown = translate(InferenceServerException("Request for unknown model: 'nope' is not found", status),
                        url="127.0.0.1:8001", model="nope")
    assert unknown.hint == "check --model"


@pytest.mark.parametrize("url", ["127.0.0.1", "localhost", "[::1]", "127.0.0.1:"])
def test_a_url_without_a_port_is_said_to_miss_one(url):
    with pytest.raises(InvalidInputError, match="is missing a port"):
        Connection(url).check()
    Connection(f"{url.rstrip(':')}:8001").check()


def test_classify_without_a_port_says_missing_port_not_nothing_listens(tmp_path, capsys):
    image = tmp_path / "one.png"
    Image.new("L", (28, 28)).save(image)
    assert main(["classify", str(image), "--url", "127.0.0.1", "--quiet"]) == InvalidInputError.exit_code
    err = capsys.readouterr().err
    assert "url '127.0.0.1' is missing a port" in err and "nothing listens" not in err and len(err.splitlines()) == 1


def test_a_file_reached_by_a_folder_and_a_glob_is_classified_once(tmp_path, monkeypatch):
    from triton_deploy.clients.paths import expand_paths

    for name in ("a/1.png", "a/b/2.png", "a/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert expand_paths(["a", "a/**/*.png", "./a/1.png", "a/notes.txt"]) == ["a/1.png", "a/b/2.png", "a/notes.txt"]
