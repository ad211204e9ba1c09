"""A training loop people can trust: AdamW, warmup + cosine, clipping, seeds, resumable checkpoints, early stopping,
progress bar (loss, lr, samples/s), JSONL/TensorBoard metrics, evaluation hooks and weighted multi-task objectives."""

from __future__ import annotations

import io
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from polymodal.cache import atomic_write_bytes
from polymodal.errors import PolymodalError
from polymodal.progress import progress_bar
from polymodal.train import run_lock
from polymodal.train.guards import (
    AT_LEAST_1, FRACTION, LEARNING_RATE, LOWER_LR, NON_NEGATIVE, NONE_OR_NON_NEGATIVE, check_ranges, check_types,
    discard_unfinished_run, forget_replaced_run, remove_killed_writes,
)
from polymodal.train.metrics import MetricsLogger

log = logging.getLogger(__name__)


class NullLogger:
    def write(self, record: dict) -> None:
        pass

    def truncate_after(self, step: int) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class TrainConfig:
    epochs: int = 10
    lr: float = 1e-3
    # learning rate of unfrozen pretrained tower layers relative to lr: at the heads' rate they forget what they knew
    # (benchmarks/hard_negatives.py, 2 image blocks or 2 text layers at lr 3e-3: held-out rsum 1.3-1.5 at 1.0,
    # 2.86-2.97 at 0.1, 3.00-3.02 at 0.01, 2.90 with frozen towers)
    tower_lr_scale: float = 0.01
    weight_decay: float = 0.1
    warmup_steps: int | None = None  # None: warmup_cap steps, but at most warmup_fraction of the run (short runs)
    warmup_cap: int = 50  # each recipe's own full warmup: contrastive 50, VQA and pretraining 30, captioning 100
    # contrastive: a tenth; VQA, pretraining and captioning: half, so runs of a few hundred steps keep the full warmup
    # they were measured with (captioning's 452-step held-out run: 100 steps gave Flickr8k CIDEr-D 0.260, a tenth 0.244)
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    early_stop_metric: str = "val/rsum"  # higher is better
    patience: int = 5  # epochs without improvement before stopping (0: never stop early)
    unfreeze_every: int = 0  # progressive unfreezing: one more image block every N epochs (0: off)
    log_every: int = 10

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise PolymodalError(f"unknown settings under train: {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d)

    def validate(self) -> None:
        check_types(self)
        check_ranges(self, {
            "epochs": AT_LEAST_1, "lr": LEARNING_RATE, "tower_lr_scale": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
            "warmup_steps": NONE_OR_NON_NEGATIVE, "warmup_cap": NON_NEGATIVE, "warmup_fraction": FRACTION,
            "grad_clip": NON_NEGATIVE,
            "patience": NON_NEGATIVE, "unfreeze_every": NON_NEGATIVE, "log_every": AT_LEAST_1,
            "seed": ("in 0..2**32-1", lambda v: 0 <= v < 2**32),  # numpy's seed range
        })
        # the loop keeps the epoch with the highest value: a rank or a loss would keep the worst epoch
        name = self.early_stop_metric.rsplit("/", 1)[-1]
        if "median_rank" in name or (name.endswith("loss") and not name.startswith("neg_")):
            raise PolymodalError(f"early_stop_metric {self.early_stop_metric!r} is lower when better, and the epoch "
                                 "kept is the one with the highest value; name a score (a recall, val/rsum, "
                                 "val/accuracy, ...) or a loss negated (val/neg_loss where reported)")


RANK_STREAM = 0x5EED  # a key of its own for make_rng: no data stream (seed, epoch, i[, ...]) shares these draws


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _checkpoint_globals() -> list:
    """What a checkpoint holds besides tensors and plain values: numpy's RNG state (an array) and metrics that may be
    numpy scalars. Only these are unpickled: a run folder from someone else cannot run code on --resume."""
    try:
        from numpy._core import multiarray  # numpy 2
    except ImportError:  # numpy 1.26
        from numpy.core import multiarray
    # a pickle names these by the module of the numpy that wrote it, numpy.core (1.x) or numpy._core (2.x): a run
    # trained before a numpy upgrade, or on a machine with the other numpy, resumes too (it was "not unpickled")
    functions = [(f, f"{module}.multiarray.{f.__name__}") for f in (multiarray._reconstruct, multiarray.scalar)
                 for module in ("numpy.core", "numpy._core")]
    return [*functions, np.ndarray, np.dtype, *{type(np.dtype(t)) for t in ("uint32", "float32", "float64", "int64")}]


def read_checkpoint(path: Path) -> dict:
    """A run's checkpoint.pt, or one error saying it is damaged (truncated by an interrupted copy, or no checkpoint
    at all) or holds more than a checkpoint does."""
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):  # weights_only: a pickle may run any code
            state = torch.load(path, map_location="cpu", weights_only=True)
        missing = [key for key in ("step", "epoch", "best", "bad_epochs") if key not in state]
        if missing:
            raise KeyError(missing[0])
    except Exception as exc:  # not a traceback
        if "unsupported global" in str(exc).lower():  # weights_only refused a global (allowed or blocked module)
            raise PolymodalError(f"cannot read {path}: it holds Python objects a training checkpoint does not, which "
                                 "are not unpickled for safety (loading them could run any code); start the run over "
                                 "with --overwrite (overwrite=True in Python)") from None
        detail = _first_detail(exc)
        if len(detail) > 160:  # torch goes on: "... directory. This is an internal miniz error. If you are ..."
            detail = detail.split(". ")[0]
        raise PolymodalError(f"cannot read {path} ({detail}): it is damaged; copy it again, or start the run over "
                             "with --overwrite (overwrite=True in Python)") from exc
    return state


def refuse_a_finished_run(out: Path, epoch: int, epochs: int, bad_epochs: int = 0, patience: int = 0) -> None:
    """Nothing left to train: refuse rather than report it as a run. A run that stopped early is finished too:
    resuming it with the same --patience would train one more epoch per resume."""
    if epoch >= epochs:
        raise PolymodalError(f"the run in {out} already trained {epoch} epochs; pass --epochs {epoch + 1} or more "
                             "(train.epochs in Python) to continue it")
    if patience and bad_epochs >= patience:
        raise PolymodalError(f"the run in {out} did not improve in its last {bad_epochs} of {epoch} epochs, which "
                             f"--patience {patience} counts as an early stop; pass --patience {bad_epochs + 1} or more "
                             "(0: no early stop; train.patience in Python) to train on")


def check_resumable(out: Path, epochs: int, patience: int = 0) -> None:
    """--resume, before the data is read (a large data set takes minutes to check): a damaged checkpoint or a run
    that already trained ``epochs`` (or stopped early) is one line at once. The trainer checks both again as it
    loads (the checkpoint is read twice: heads and optimizer state, small beside the data scan; mmap refused some
    checkpoints)."""
    path = Path(out) / "checkpoint.pt"
    if path.is_file():  # (none: check_run_folder's line)
        state = read_checkpoint(path)
        refuse_a_finished_run(Path(out), state["epoch"], epochs, state["bad_epochs"], patience)


def _first_detail(exc: Exception) -> str:
    """The informative line of a state-dict error (torch's first line is only "Error(s) in loading ...:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if not line.endswith(":")), lines[0] if lines else type(exc).__name__)


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """objectives: {name: (objective, weight, loader)}; each step draws one batch per objective (cycling loaders)
    and accumulates weighted gradients. eval_fn(model) -> {"val/...": float} runs after every epoch."""

    def __init__(self, model, objectives: dict, config: TrainConfig, out_dir: str | Path,
                 eval_fn: Callable | None = None, progress: bool = True) -> None:
        if not objectives:
            raise PolymodalError("no training objectives given")
        config.validate()
        self.model, self.objectives, self.cfg = model, objectives, config
        self.out = Path(out_dir)
        self.eval_fn, self.progress = eval_fn, progress
        trainable = {id(p) for p in model.parameters() if p.requires_grad} | {id(p) for p in self._progressive_params()}
        groups: dict[tuple, list] = {}
        for name, p in model.named_parameters():
            if id(p) in trainable:
                # pretrained tower weights move at tower_lr_scale x lr; biases, norms and temperature get no decay
                tower = name.startswith(("image_tower.", "text_tower."))
                groups.setdefault((tower, p.ndim >= 2), []).append(p)
        if not groups:  # e.g. `train vqa --freeze` naming every part
            raise PolymodalError("nothing is left to train: every part of the model is frozen; freeze fewer parts "
                                 "(--freeze; freeze in Python)")
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": config.lr * (config.tower_lr_scale if tower else 1.0),
              "weight_decay": config.weight_decay if decay else 0.0} for (tower, decay), ps in groups.items()],
            lr=config.lr,
        )
        self.steps_per_epoch = max(len(loader) for _, _, loader in objectives.values())
        if self.steps_per_epoch == 0:  # an epoch without a step would "finish" and save an untrained model
            raise PolymodalError("the training data gives no batch (too few rows for the batch size); add data or "
                                 "lower --batch-size (batch_size in Python)")
        total = self.steps_per_epoch * config.epochs
        warmup = self._warmup(total)
        if config.warmup_steps is not None and warmup >= total:
            log.warning("warmup_steps=%d is not shorter than the whole run (%d steps): the learning rate never reaches "
                        "lr=%g nor decays; pass --warmup-steps %d (a tenth of the run; train.warmup_steps in "
                        "Python) or train longer",
                        warmup, total, config.lr, min(max(1, total // 10), total - 1))  # a 1-step run: 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(warmup, total))
        self.step, self.epoch, self.best, self.bad_epochs = 0, 0, -math.inf, 0
        self.best_metrics: dict = {}  # the record of the best epoch so far (kept in the checkpoint)
        self.ended = False  # the loop ran to its end (--epochs or an early stop): kept() counts the epochs trained

    def _warmup(self, total: int) -> int:
        if self.cfg.warmup_steps is None:  # a full warmup would be the whole of a short run: the lr would never peak
            return min(self.cfg.warmup_cap, math.floor(total * self.cfg.warmup_fraction + 1e-9))
        return self.cfg.warmup_steps

    # -- progressive unfreezing ------------------------------------------------------
    def _progressive_params(self) -> list:
        """Blocks that progressive unfreezing will open later must be in the optimizer from the start."""
        if not self.cfg.unfreeze_every or not hasattr(self.model, "image_tower"):
            return []
        n = self.model.config.image_trainable_blocks
        blocks = list(self.model.image_tower.blocks)[len(self.model.image_tower.blocks) - n:]
        head = [self.model.image_tower.net._conv_head, self.model.image_tower.net._bn1]
        return [p for m in blocks + head for p in m.parameters()]

    def _apply_unfreezing(self) -> None:
        if self.cfg.unfreeze_every and hasattr(self.model, "set_trainable"):
            n = min(self.model.config.image_trainable_blocks, self.epoch // self.cfg.unfreeze_every)
            self.model.set_trainable(n, self.model.config.text_trainable_layers)

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        state = {
            "model": self.model.trained_state() if hasattr(self.model, "trained_state") else self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "step": self.step, "epoch": self.epoch, "best": self.best, "bad_epochs": self.bad_epochs,
            "best_metrics": self.best_metrics,
            "config": asdict(self.cfg), "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> None:
        if not self.checkpoint_path.is_file():
            raise PolymodalError(f"no checkpoint at {self.checkpoint_path}; train without --resume "
                                 "(fit(resume=True) in Python) first")
        state = read_checkpoint(self.checkpoint_path)
        step, epoch, best, bad = state["step"], state["epoch"], state["best"], state["bad_epochs"]
        try:
            self.model.load_state_dict(state["model"], strict=False)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as exc:  # another architecture: sizes or parameter groups differ
            raise PolymodalError(f"{self.checkpoint_path} does not fit this model ({_first_detail(exc)}); "
                                 "resume with the settings the run was trained with, or train into a new folder") from exc
        self.scheduler.load_state_dict(state["scheduler"])
        if epoch and step != epoch * self.steps_per_epoch:
            # the epochs trained took another number of steps each than this session's (another --batch-size,
            # another process count under torchrun, other data): epochs x this session's steps per epoch would end
            # the cosine before `step` (a rate of 0 for the rest of the run) or long after the last step. Count
            # this session's steps in the earlier epochs' units, so the curve goes on from where it was and ends
            # at the last step.
            total = round(step / epoch * self.cfg.epochs)
            curve, done, scale = warmup_cosine(self._warmup(total), total), step, step / epoch / self.steps_per_epoch
            self.scheduler.lr_lambdas = [lambda s: curve(done + (s - done) * scale)
                                         for _ in self.optimizer.param_groups]
        # the optimizer came back with the old schedule's last rate (0 at the end of a finished run): the step
        # about to run takes its rate from this run's schedule, which --epochs may have lengthened
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.step, self.epoch, self.best, self.bad_epochs = step, epoch, best, bad
        self.best_metrics = state.get("best_metrics", {})  # older checkpoints did not keep it
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])

    # -- the loop ------------------------------------------------------------------------
    def fit(self, resume: bool = False, on_best: Callable | None = None, on_start: Callable | None = None,
            score_start: bool = False) -> dict:
        """Train; returns the record of the best epoch ({} when none improved: a NaN metric, or a resumed older
        checkpoint; without eval_fn, the last epoch's). on_best(model) runs whenever validation improves (a tie too:
        the later, more trained, epoch is kept, though a tie does not hold off early stopping; without eval_fn,
        after every epoch); on_start() once the checkpoint to resume has
        loaded and before the first step (e.g. to write the run's settings: a refused resume writes nothing).
        score_start (fine-tuning a saved model): validate the model before training as epoch 0, so that it stays
        the best (RUN/model) unless an epoch ties or beats it.
        Rank 0, which writes the run folder, holds its lock meanwhile: one training process at a time there."""
        from polymodal.train import distributed

        if not distributed.is_main():
            return self._fit(resume, on_best, on_start, score_start)
        self.out.mkdir(parents=True, exist_ok=True)
        with run_lock.holding(self.out):
            remove_killed_writes(self.out)
            return self._fit(resume, on_best, on_start, score_start)

    def _fit(self, resume: bool = False, on_best: Callable | None = None, on_start: Callable | None = None,
             score_start: bool = False) -> dict:
        """fit's loop (rank 0 runs it holding the run folder's lock)."""
        from polymodal.train import distributed

        self.ended = False
        if resume:
            self.load_checkpoint()
            refuse_a_finished_run(self.out, self.epoch, self.cfg.epochs, self.bad_epochs, self.cfg.patience)
            log.info("resumed at epoch %d, step %d", self.epoch, self.step)
        else:
            set_seed(self.cfg.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        main = distributed.is_main()  # only rank 0 writes metrics, checkpoints and models
        if on_start is not None and main:
            on_start()
        logger = MetricsLogger(self.out, purge_after=self.step if resume else None) if main else NullLogger()
        if resume:
            logger.truncate_after(self.step)
        saved = False
        try:
            if score_start and not resume and self.eval_fn is not None:
                self._score_start(logger, on_best if main else None)
            while self.epoch < self.cfg.epochs:
                self._apply_unfreezing()
                self._seed_rank()
                train_metrics = self._train_epoch(logger)
                self.epoch += 1
                self._refuse_broken_weights()  # before validation: a NaN model scored 0 there, and was kept
                record = {"step": self.step, "epoch": self.epoch, "split": "val", **train_metrics}
                if self.eval_fn is not None:
                    self.model.eval()
                    with torch.no_grad():
                        record.update(self._check_metric(self.eval_fn(self.model)))
                logger.write(record)
                score = record.get(self.cfg.early_stop_metric, -record.get("train_loss", 0.0))
                improved = score >= self.best  # a tie keeps the later, more trained epoch, but is no progress for patience
                if improved:
                    self.bad_epochs = 0 if score > self.best else self.bad_epochs + 1
                    self.best = score
                else:
                    self.bad_epochs += 1
                # without validation nothing chooses an epoch: the trainers keep the last one as RUN/model, so it
                # is the one reported (the lowest training loss was, beside a model of a later epoch)
                if improved or self.eval_fn is None:
                    self.best_metrics = record
                    if on_best is not None and main:
                        on_best(self.model)
                if main:
                    self.save_checkpoint()
                    if not saved and not resume:
                        forget_replaced_run(self.out)
                    saved = True
                log.info("epoch %d: %s", self.epoch, {k: round(v, 4) for k, v in record.items() if isinstance(v, float)})
                if self.cfg.patience and self.bad_epochs >= self.cfg.patience:
                    log.info("early stop: %s did not improve for %d epochs", self.cfg.early_stop_metric, self.bad_epochs)
                    break
            self.ended = True
        except BaseException as exc:
            logger.close()
            if main and not resume and not saved and discard_unfinished_run(self.out):
                exc.replaced_run_restored = True  # the CLI says so instead of "nothing was kept"
            raise
        logger.close()
        if self.best_metrics.get("epoch") == 0:
            metric = self.cfg.early_stop_metric
            log.warning("no epoch beat the model training started from (%s %.4g before training): %s is that model, "
                        "unchanged; to try a lower --lr, more data or other settings, train again with --overwrite "
                        "or into a new --out (overwrite=True or another out in Python)", metric, self.best,
                        self.out / "model")
        return self.best_metrics

    def kept(self) -> dict | None:
        """What a model saved now holds, for its trained_with.json: the best epoch so far (0: the starting model),
        of how many (``epochs``: while the run trains, its --epochs; once it has ended, the epochs it trained, all
        sessions together, with ``asked``, its --epochs, where an early stop trained fewer), and the validation
        figure that chose it (``metric`` None: no validation, the last epoch's). A later save rewrites it, and so
        does TrainingPhotos.finish at the end (an epoch kept was saved with the count of its time), so RUN/model's
        says which epoch the finished run kept, of how many. None before any epoch is scored."""
        if not isinstance(self.best_metrics.get("epoch"), int):
            return None
        metric = self.cfg.early_stop_metric if self.eval_fn is not None else None
        value = self.best_metrics.get(metric) if metric else None
        epochs = self.epoch if self.ended else self.cfg.epochs
        return {"epoch": self.best_metrics["epoch"], "epochs": epochs, "metric": metric,
                "value": float(value) if isinstance(value, (int, float)) else None,
                **({"asked": self.cfg.epochs} if epochs != self.cfg.epochs else {})}

    def _seed_rank(self) -> None:
        """Under torchrun every process seeds alike (so all start from the same initial weights), and would then draw
        the same dropout masks (and any other torch/numpy/random draw) as every other process: sample j of each
        process's batch shared one mask. Each epoch starts each process's generators from (seed, epoch, rank)
        instead: the processes draw apart, and a resumed run (which restarts at an epoch) draws what the straight
        run drew on every process, without keeping each process's state in the checkpoint. One process keeps the
        single stream from set_seed and the checkpoint, as before."""
        from polymodal.data.augment import make_rng
        from polymodal.train import distributed

        if distributed.world_size() > 1:
            set_seed(int(make_rng(self.cfg.seed, self.epoch, distributed.rank(), RANK_STREAM).integers(2**32)))

    def _refuse_broken_weights(self) -> None:
        """One error when the epoch left a weight it trains NaN or inf (a step whose loss was finite, as the loss
        check before each step sees it, can still diverge): nothing would look at that epoch's weights again, and
        they would be saved as the checkpoint and (without validation) as RUN/model, which then answered NaN.
        Under torchrun the processes hold the same weights and stop together: rank 0 says it, not each process."""
        from polymodal.train import distributed

        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all())  # one GPU sync, not one a tensor
        if distributed.all_true(finite):  # agreed: a process that differed would leave the others waiting
            return
        raise distributed.error_of_every_rank(
            f"the weights became NaN or inf in epoch {self.epoch} (by step {self.step}) at --lr {self.cfg.lr:g}, "
            f"though the training loss was finite: {LOWER_LR}, or check the data; the run keeps its last checkpoint, "
            "if any")

    def _check_metric(self, metrics: dict) -> dict:
        """Validation's metrics, or one error when they lack early_stop_metric: a misspelt name would otherwise
        choose the best model and stop early by the training loss, without a word."""
        if metrics and self.cfg.early_stop_metric not in metrics:
            raise PolymodalError(f"early_stop_metric {self.cfg.early_stop_metric!r} is not among the validation "
                                 f"metrics ({', '.join(sorted(metrics))}); name one of them")
        return metrics

    def _score_start(self, logger, on_best: Callable | None) -> None:
        self.model.eval()
        with torch.no_grad():
            record = {"step": 0, "epoch": 0, "split": "val", **self._check_metric(self.eval_fn(self.model))}
        logger.write(record)
        score = record.get(self.cfg.early_stop_metric)
        if isinstance(score, (int, float)) and math.isfinite(score):
            self.best, self.best_metrics = score, record
            if on_best is not None:
                on_best(self.model)

    def _sync_gradients(self) -> None:
        """Average gradients across torch.distributed ranks (what DDP does; our objectives call model methods
        other than forward, which DDP's hooks would not see). With gathered contrastive features each rank holds
        world_size x its share, so the average is exactly the single-process global-batch gradient."""
        from polymodal.train import distributed

        distributed.average_gradients(p for group in self.optimizer.param_groups for p in group["params"])

    def _batches(self):
        iters = {name: iter(loader) for name, (_, _, loader) in self.objectives.items()}
        for _ in range(self.steps_per_epoch):
            batch = {}
            for name, (_, _, loader) in self.objectives.items():
                try:
                    batch[name] = next(iters[name])
                except StopIteration:  # shorter loaders cycle within the epoch
                    iters[name] = iter(loader)
                    batch[name] = next(iters[name])
            yield batch

    def _train_epoch(self, logger: MetricsLogger) -> dict:
        from polymodal.train import distributed

        self.model.train()
        for _, _, loader in self.objectives.values():
            if hasattr(loader.dataset, "set_epoch"):
                loader.dataset.set_epoch(self.epoch)
        bar = progress_bar(total=self.steps_per_epoch, desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                           disable=not self.progress, leave=False)
        world = distributed.world_size()  # every rank takes a batch a step: samples/s counts them all (torchrun)
        first, (first_objective, _, _) = next(iter(self.objectives.items()))  # its batches' samples are counted
        count = getattr(first_objective, "samples", None) or (lambda batch: len(batch[0]))
        scale = getattr(self.model, "log_logit_scale", None)  # a learned temperature: kept in CLIP's range below
        if not (isinstance(scale, torch.nn.Parameter) and scale.requires_grad):
            scale = None
        losses, samples, t0 = [], 0, time.perf_counter()
        try:  # an interrupt would leave the bar to be drawn again, as a stray "epoch 1/1: 0%" line
            for i, batches in enumerate(self._batches()):
                self.optimizer.zero_grad(set_to_none=True)
                metrics, total = {}, 0.0
                for name, (objective, weight, _) in self.objectives.items():
                    m = objective.backward(self.model, batches[name], weight)
                    total += weight * m["loss"]
                    metrics.update({f"{name}/{k}": v for k, v in m.items()})
                if not math.isfinite(total):  # stop before the step: NaN weights would be saved as the best model
                    raise PolymodalError(f"the training loss became {total} at step {self.step + 1} (epoch "
                                         f"{self.epoch + 1}) at --lr {self.cfg.lr:g}; the weights were not updated "
                                         f"with it: {LOWER_LR}, or check the data; the run keeps its last "
                                         "checkpoint, if any")
                self._sync_gradients()
                if self.cfg.grad_clip:
                    grads = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
                    torch.nn.utils.clip_grad_norm_(grads, self.cfg.grad_clip)
                lr = self.scheduler.get_last_lr()[0]  # the rate this step uses; after scheduler.step() it is the next's
                self.optimizer.step()
                if scale is not None:  # CLIP's in-place clamp: [1, 100]
                    with torch.no_grad():
                        scale.clamp_(0.0, math.log(100.0))
                self.scheduler.step()
                self.step += 1
                losses.append(total)
                samples += count(batches[first]) * world
                rate = samples / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{total:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.0f}", refresh=False)
                bar.update()
                # every log_every steps, and the last step of each epoch so that short runs have a curve too
                if self.step % self.cfg.log_every == 0 or i == self.steps_per_epoch - 1:
                    # epoch numbered from 1, as the progress bar and the epoch's "val" row that follows number it
                    logger.write({"step": self.step, "epoch": self.epoch + 1, "split": "train", "loss": total, "lr": lr,
                                  "samples_per_s": rate, **metrics})
        finally:
            bar.close()
        return {"train_loss": float(np.mean(losses)) if losses else float("nan"),
                "samples_per_s": samples / max(1e-9, time.perf_counter() - t0)}
