"""AcceptTrouble: the pause and the log lines of a run of failed accepts (injected time)."""

from lsproxy.serve.server import AcceptTrouble

REASON = "EMFILE: Too many open files"


def fail_for(trouble: AcceptTrouble, start: float, seconds: float) -> tuple[float, list[str], int]:
    """Accepts failing back to back for ``seconds``: (end time, lines, accept calls)."""
    now, lines, calls = start, [], 0
    while now < start + seconds:
        pause, line = trouble.failed(now, REASON)
        calls += 1
        if line is not None:
            lines.append(line)
        now += pause
    return now, lines, calls


def test_the_pause_doubles_to_a_second_and_restarts_after_a_success() -> None:
    trouble = AcceptTrouble()
    pauses = [trouble.failed(float(i), REASON)[0] for i in range(6)]
    assert pauses == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    trouble.accepted(6.0)
    assert trouble.failed(7.0, REASON)[0] == 0.1


def test_ten_minutes_out_of_descriptors_is_a_first_line_and_one_summary_a_minute() -> None:
    trouble = AcceptTrouble()
    now, lines, calls = fail_for(trouble, 1000.0, 600.0)
    assert calls < 610  # about one accept a second, not ten
    assert len(lines) == 10  # the first failure, then one line a minute
    assert REASON in lines[0] and "new consumers wait" in lines[0]
    assert all(REASON in line and "since the last report" in line for line in lines[1:])
    summarised = 1 + sum(int(line.split()[2]) for line in lines[1:])
    assert calls - 61 <= summarised <= calls  # the last minute's wait for the next line
    recovered = trouble.accepted(now)
    assert recovered is not None and f"after {calls} failed accepts" in recovered
    assert trouble.accepted(now + 1) is None


def test_failures_between_successes_are_counted_not_logged_each_time() -> None:
    trouble = AcceptTrouble()
    lines = []
    now = 0.0
    for _ in range(3000):  # 5 minutes of one failed, one good accept every 0.1 s
        _, line = trouble.failed(now, REASON)
        lines += [line] if line else []
        lines += [line] if (line := trouble.accepted(now + 0.05)) else []
        now += 0.1
    assert len(lines) <= 2 * 6  # a failure line and its recovery line, once a minute
    reported = 1 + sum(int(line.split()[2]) for line in lines if "since the last report" in line)
    assert 3000 - 610 <= reported <= 3000  # the last minute's wait for the next failure line
