"""The command line's own behaviour, independent of any subcommand's work: misspelt options and subcommands."""

from __future__ import annotations

import pytest

from triton_deploy.cli import main


@pytest.mark.parametrize("argv, suggestion", [
    (["serve", "--port", "9000"], "--http-port"),
    (["repo", "build/digits", "--batch", "4"], "--max-batch-size"),
    (["export", "--output", "x", "--keras-modle", "m.keras"], "--keras-model"),
])
def test_a_misspelt_option_is_answered_by_its_subcommand_with_its_own_options(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith(f"usage: triton-deploy {argv[0]} "), err  # the subcommand's usage, not the top level's
    assert err.rstrip().endswith(f"(did you mean {suggestion}?)"), err
    assert f"triton-deploy {argv[0]}: error: unrecognized arguments: {argv[-2]} {argv[-1]}" in err


def test_a_misspelt_subcommand_gets_a_subcommand_suggestion(capsys):
    with pytest.raises(SystemExit):
        main(["exprot", "--output", "x"])
    err = capsys.readouterr().err
    assert err.startswith("usage: triton-deploy [-h]") and err.rstrip().endswith("(did you mean export?)")
