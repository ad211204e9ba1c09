"""Progress bars written to a log file (not a terminal) do not repeat every redraw and keep their final state."""
import io

import pytest

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


def test_tqdms_monitor_thread_is_throttled_too():
    bar = progress_bar(total=3, file=io.StringIO())
    assert bar.mininterval >= 30 and bar.maxinterval >= 30  # maxinterval=10 would force a redraw every 10 s
    bar.close()


def test_a_training_epoch_in_a_log_file_is_two_lines_not_one_per_step(tmp_path, capsys):
    """The trainer sets the bar's loss/lr postfix every step: a refreshing set_postfix ignored the throttle."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from polymodal.train.objectives import Objective
    from polymodal.train.trainer import TrainConfig, Trainer

    class Fit(Objective):
        name = "fit"

        def compute(self, model, batch):
            x, y = batch
            return ((model(x) - y) ** 2).mean(), {}

    loader = DataLoader(TensorDataset(torch.randn(60, 2), torch.randn(60, 1)), batch_size=1)  # 60 steps
    trainer = Trainer(torch.nn.Linear(2, 1), {"fit": (Fit(), 1.0, loader)},
                      TrainConfig(epochs=1, patience=0, log_every=1000), tmp_path, progress=True)
    trainer.fit()
    lines = [line for line in _lines(capsys.readouterr().err) if "epoch 1/1" in line]
    assert len(lines) == 2 and "60/60" in lines[-1] and "loss=" in lines[-1], lines


def test_an_epoch_stopped_by_an_error_closes_its_bar(tmp_path, monkeypatch):
    """A KeyboardInterrupt in a step used to leave the bar open, drawn again later as a stray 'epoch 1/1: 0%'."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import polymodal.train.trainer as trainer_module
    from polymodal.train.objectives import Objective
    from polymodal.train.trainer import TrainConfig, Trainer

    bars = []

    def spy(**kwargs):
        bars.append(progress_bar(file=io.StringIO(), **kwargs))
        return bars[-1]

    class Interrupted(Objective):
        name = "fit"

        def compute(self, model, batch):
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_module, "progress_bar", spy)
    loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = Trainer(torch.nn.Linear(2, 1), {"fit": (Interrupted(), 1.0, loader)},
                      TrainConfig(epochs=1, patience=0), tmp_path, progress=True)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert bars and all(bar.disable for bar in bars)  # tqdm's close() disables the bar
