"""Progress within a stage: plain lines at each quarter off a terminal, a bar redrawn in place on one."""

import io

from rmeeto_export.progress import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_at_each_quarter_and_the_end():
    lines, stream = [], io.StringIO()
    assert list(progress(range(8), "parity runs", log=lines.append, stream=stream)) == list(range(8))
    assert [line.split(" after ")[0].strip() for line in lines] == [
        "parity runs: 2/8 (25%)", "parity runs: 4/8 (50%)", "parity runs: 6/8 (75%)", "parity runs: 8/8 (100%)"]
    assert stream.getvalue() == ""  # not a terminal: nothing drawn


def test_few_items_give_one_line_each_and_generators_need_a_total():
    lines = []
    list(progress(iter("abc"), "graphs", log=lines.append, stream=io.StringIO()))
    assert [line.split(":")[1].split("(")[0].strip() for line in lines] == ["1/3", "2/3", "3/3"]
    lines.clear()
    list(progress((x for x in range(5)), "batches", total=5, log=lines.append, stream=io.StringIO()))
    assert lines[-1].strip().startswith("batches: 5/5 (100%)")


def test_bar_on_a_terminal_ends_its_line_and_logs_nothing():
    lines, terminal = [], _Terminal()
    list(progress(range(4), "calibration", log=lines.append, stream=terminal))
    drawn = terminal.getvalue()
    assert lines == [] and drawn.count("\r") == 4 and drawn.endswith("\n") and drawn.count("\n") == 1
    assert "calibration [" + "#" * 24 + "] 4/4" in drawn.split("\r")[-1]
