"""The command line's own behaviour, independent of any subcommand's work: misspelt options and subcommands, progress."""

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


def test_progress_in_a_log_is_plain_lines_in_the_order_the_phases_ran(capsys):
    """Not a terminal (CI, a pipe): each phase says when it starts and ends, whole, with its count and last status."""
    from triton_deploy.progress import Reporter

    reporter = Reporter()
    with reporter.bars((3, "Drawing renderings"), (2, "Training the digits CNN"), (4, "Never reached")) as bars:
        drawing, training, _never = bars
        for _ in range(3):
            drawing.advance()
        training.advance(status="loss 0.50")
        training.advance(status="loss 0.13 acc 0.96")
    with reporter.bar(None, "Counting images") as counting:
        counting.advance(7)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "  Drawing renderings...", "\u2713 Drawing renderings: 3/3",
        "  Training the digits CNN...", "\u2713 Training the digits CNN: 2/2",
        "  Counting images...", "\u2713 Counting images: 7"]
    assert lines[3].endswith(" s)  loss 0.13 acc 0.96") and "\u2501" not in "".join(lines)  # no bar glyphs
    with Reporter(quiet=True).bar(5, "Quiet") as quiet:
        quiet.advance()
    assert capsys.readouterr().err == ""
