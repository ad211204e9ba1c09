"""Progress bars written to a log file (not a terminal) do not repeat every redraw and keep their final state."""
import io

from polymodal.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _lines(text: str) -> list[str]:
    return [part for part in text.replace("\r", "\n").split("\n") if part.strip()]


def test_a_log_file_gets_the_first_and_final_state_only():
    log = io.StringIO()
    bar = progress_bar(total=200, desc="embedding", file=log, leave=False, mininterval=0)
    for _ in range(200):
        bar.update()
    bar.close()
    lines = _lines(log.getvalue())
    assert len(lines) == 2, lines
    assert "0/200" in lines[0] and "200/200" in lines[-1]  # leave=False would blank the final line


def test_a_terminal_keeps_tqdms_live_redraws():
    screen = _Terminal()
    bar = progress_bar(range(50), desc="embedding", file=screen, mininterval=0, miniters=1)
    for _ in bar:
        pass
    assert len(_lines(screen.getvalue())) > 10
