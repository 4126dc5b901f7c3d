"""The crisp logger and progress helper: messages appear on stderr only when asked for."""

import logging

import crisp
from crisp.cli import main
from crisp.progress import log_to_stderr, logger, note, progress, reporting


def test_compile_progress_lines_reach_the_logger_only_when_asked(caplog, monkeypatch, small_cnn):
    model, x = small_cnn
    monkeypatch.setattr(logging.getLogger(), "level", logging.WARNING)  # INFO off: progress=True still shows
    crisp.compile(model, x, block=16, sparsity=0.8, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("crisp")]
    assert lines[0] == "crisp: tracing SmallCNN ..." and any("[1/7]" in line for line in lines)
    caplog.clear()
    crisp.compile(model, x, block=16, sparsity=0.8)
    assert not [r for r in caplog.records if r.name.startswith("crisp")]


def test_log_to_stderr_writes_bare_lines_and_cleans_up(capsys):
    child = logging.getLogger("crisp.test")
    with log_to_stderr(), log_to_stderr():  # nested: one handler
        note(child, True, "step %d done", 3)
        note(child, False, "not shown")
    assert capsys.readouterr().err == "step 3 done\n"
    assert not logger.handlers and logger.level == logging.NOTSET


def test_reporting_without_logging_configured_prints_to_stderr(capsys, monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # as in a plain script: nobody configured logging
    with reporting(True):
        logging.getLogger("crisp.x").info("visible")
    logging.getLogger("crisp.x").info("dropped")
    assert capsys.readouterr().err == "visible\n"


def test_progress_bar_is_the_iterable_itself_when_disabled():
    items = [1, 2, 3]
    assert progress(items, enabled=False, desc="x") is items
    assert list(progress(items, enabled=None, desc="x")) == items


def test_cli_shows_compile_progress_on_stderr(capsys):
    assert main(["compile", "--model", "small_cnn", "--block", "16", "--sparsity", "0.8"]) == 0
    captured = capsys.readouterr()
    assert "crisp: tracing SmallCNN ..." in captured.err and "[7/7]" in captured.err
    assert "tracing" not in captured.out
