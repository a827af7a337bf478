"""A bad argument to any `paw` command is one line on stderr and exit 2, never a usage dump or a
traceback."""

from __future__ import annotations

import pytest

from worker.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["dlq", "show", "zz"], "paw dlq show: argument id: a dead-letter id is 6 or more hex characters"),
        (["item", "list", "--limit", "x"], "paw item list: argument --limit: invalid int value: 'x'"),
        (["status", "--watch", "soon"], "paw status: argument --watch: invalid float value: 'soon'"),
        (["nonsense"], "paw: argument command: invalid choice: 'nonsense'"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(says) and err.count("\n") == 1, err
