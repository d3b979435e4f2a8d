"""Training callbacks and the training-time mIoU metric: learning-rate decay,
validation mIoU, the per-epoch log and curves, resumable early stopping, checkpoints
that survive a kill (all files through :class:`utils.run.Run`)."""
import math
import os
import shutil
import threading
import time

import keras
import numpy as np

from utils.errors import NonFiniteLoss, note_progress
from utils.run import LOG_CSV, Run, logged, progress_verbose


class StopOnNonFinite(keras.callbacks.Callback):
    """Stop training at the first non-finite loss by raising :class:`NonFiniteLoss`,
    naming the epoch and step. Raised from the batch that showed it, so the epoch's log
    row, curves and checkpoints (callbacks after this one) are never written with it:
    the run folder keeps the checkpoints of the epochs before. (Keras's
    ``TerminateOnNaN`` only sets ``stop_training``, and the epoch still ends and saves.)
    ``where``: the run folder, for the message."""

    def __init__(self, where):
        super().__init__()
        self.where = where
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        note_progress(f"epoch {epoch + 1}")     # for the one line printed on Ctrl-C

    def on_train_batch_end(self, batch, logs=None):
        self._check(logs, f"epoch {self._epoch + 1}, step {batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        self._check(logs, f"the end of epoch {epoch + 1}")

    def _check(self, logs, at):
        for key, value in (logs or {}).items():
            if "loss" not in key:
                continue
            value = float(np.asarray(value))
            if not math.isfinite(value):
                raise NonFiniteLoss(
                    str(self.where),
                    f"training stopped at {at}: {key} is {value} (the run diverged); nothing "
                    f"of that epoch was saved, the checkpoints of the epochs before it are kept",
                    "start a new run with a lower learning rate")


def _get_lr(optimizer):
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class LearningRateLog(keras.callbacks.Callback):
    """Adds ``learning_rate`` (the optimizer's rate after the epoch, as its schedule
    gives it) to each epoch's logs; put it before the log writer."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _get_lr(self.model.optimizer)


class ExponentDecayScheduler(LearningRateLog):
    """Multiply the learning rate by ``decay_rate`` after every epoch, optionally after a
    linear warm-up over the first ``warmup_steps`` training steps (0: none, as the original).

    The rate of epoch ``e`` is ``initial_lr * decay_rate ** (e - start_epoch)``, computed
    from the epoch number rather than accumulated, so a resumed run gets the same rate.
    With ``initial_lr=None`` the optimizer's rate at the start of training is used.
    """

    def __init__(self, decay_rate, initial_lr=None, start_epoch=0, verbose=0, warmup_steps=0):
        super().__init__()
        self.decay_rate = decay_rate
        self.initial_lr = initial_lr
        self.start_epoch = start_epoch
        self.verbose = verbose
        self.warmup_steps = int(warmup_steps)
        self.learning_rates = []
        self._epoch_lr = None

    def on_train_begin(self, logs=None):
        if self.initial_lr is None:
            self.initial_lr = _get_lr(self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.initial_lr * self.decay_rate ** max(epoch - self.start_epoch, 0)
        self._epoch_lr = lr
        self.model.optimizer.learning_rate.assign(lr)
        self.learning_rates.append(lr)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: learning rate {lr:.4g}.")

    def on_train_batch_begin(self, batch, logs=None):
        # Linear warm-up over the optimizer's first ``warmup_steps`` updates: step k
        # (0-based) uses (k + 1) / warmup_steps of the epoch's rate. Counted by the
        # optimizer, so a run resumed with its optimizer state does not warm up again.
        if not self.warmup_steps:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step >= self.warmup_steps:
            self.model.optimizer.learning_rate.assign(self._epoch_lr)
            self.warmup_steps = 0
            return
        self.model.optimizer.learning_rate.assign(self._epoch_lr * (step + 1) / self.warmup_steps)


class PerClassIoU(keras.callbacks.Callback):
    """Print the per-class IoU behind ``val_mIoU`` on the epochs that validated
    (``fit`` leaves the compiled :class:`MeanIoU` holding the validation pass's counts
    when the epoch ends)."""

    def __init__(self, metric, name="val_mIoU"):
        super().__init__()
        self.metric, self.name = metric, name

    def on_epoch_end(self, epoch, logs=None):
        if logs and self.name in logs:
            per_class = " ".join(f"{v:.3f}" for v in self.metric.per_class())
            print(f"Epoch {epoch + 1}: {self.name} {float(logs[self.name]):.4f} "
                  f"(per class {per_class})")


class EpochLog(keras.callbacks.Callback):
    """``CSVLogger`` to ``training_log.csv`` (or ``name``) that rewrites the file
    atomically each epoch and keeps every column ever logged (an epoch without
    validation leaves its ``val_`` cells empty), continuing the rows of a resumed run."""

    def __init__(self, run, name=LOG_CSV):
        super().__init__()
        self.run, self.name = run, name

    def on_epoch_end(self, epoch, logs=None):
        log = self.run.log(self.name)
        logs = {k: float(np.asarray(v)) for k, v in (logs or {}).items()}
        keys = [k for k in log if k != "epoch"]
        keys += [k for k in sorted(logs) if k not in keys]
        n = len(log.get("epoch", []))
        rows = [["epoch"] + keys]
        for i in range(n):
            rows.append([log["epoch"][i]] + [_cell(log.get(k, [])[i] if i < len(log.get(k, []))
                                                   else math.nan) for k in keys])
        rows.append([epoch] + [_cell(logs.get(k, math.nan)) for k in keys])
        self.run.write_rows(rows, self.name)


def _cell(value):
    return "" if isinstance(value, float) and math.isnan(value) else value


class CurvePlot(keras.callbacks.Callback):
    """Writes ``epoch_loss.txt`` and ``epoch_val_loss.txt`` (the original's
    one-value-a-line loss files) each epoch, and redraws ``epoch_loss.png`` from the
    whole log after each validated epoch, after any epoch that ends ``redraw_s`` seconds
    or more after the last drawing, and when training ends: one panel per logged
    quantity (loss, then val_mIoU, accuracies, ...), train and ``val_`` curves together,
    with the original's Savitzky-Golay smoothing. (A drawing took 0.7 s in the demo's
    U-Net, whose epochs take 5-7 s.)"""

    def __init__(self, run, redraw_s=60.0):
        super().__init__()
        self.run = run
        self.redraw_s = redraw_s
        self.drawn = True
        self.drawn_at = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        log = self.run.log()
        if not log.get("loss"):
            return
        self.run.write_text("epoch_loss.txt", "".join(f"{v}\n" for v in log["loss"]))
        if "val_loss" in log:
            self.run.write_text("epoch_val_loss.txt",
                                "".join(f"{v}\n" for v in logged(log, "val_loss")))
        self.drawn = False
        if (logs is None or "val_loss" in logs
                or time.perf_counter() - self.drawn_at >= self.redraw_s):
            self.draw(log)

    def on_train_end(self, logs=None):
        if not self.drawn:
            self.draw(self.run.log())

    def draw(self, log):
        self.run.write("epoch_loss.png", lambda tmp: plot_log(log, tmp))
        self.drawn, self.drawn_at = True, time.perf_counter()


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch's training steps (``steps_s``) and of the rest of the
    epoch (``other_s``: validation passes, val_mIoU, logs, plots, checkpoints), up to
    this callback's ``on_epoch_end``: put it last to count every other callback's.

    The first batch through a newly compiled function also builds its graph (tracing,
    and oneDNN's kernels for the new shapes): for the first training step of each
    ``fit`` and the first validation batch after it, that extra time is taken out of
    ``steps_s`` / ``other_s`` and kept in ``build_s`` (``"training"``,
    ``"validation"``). It is estimated as that batch's time less a steady batch's: the
    median of the fit's other steps (batches of one size), the slowest of the pass's
    other validation batches (the last one may be smaller). With no other batch to
    compare there is no estimate, and the time stays where it was."""

    def __init__(self):
        super().__init__()
        self.steps_s, self.other_s = [], []
        self.build_s = {"training": 0.0, "validation": 0.0}
        self._pending_val_build = 0.0

    def on_train_begin(self, logs=None):
        # Per fit: (epoch index, seconds) of its first step, the other steps' seconds,
        # and whether a validation pass has run (only the first one builds its graph).
        self._first_step, self._steps, self._validated = None, [], False

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last_step = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        if self._first_step is None:
            self._first_step = (len(self.steps_s), now - self._last_step)
        else:
            self._steps.append(now - self._last_step)
        self._last_step = now

    def on_test_begin(self, logs=None):
        self._test_batches, self._test_last = [], time.perf_counter()

    def on_test_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self._test_batches.append(now - self._test_last)
        self._test_last = now

    def on_test_end(self, logs=None):
        first_pass, self._validated = not self._validated, True
        batches = self._test_batches
        if first_pass and len(batches) > 1:
            self._pending_val_build = max(0.0, batches[0] - max(batches[1:]))

    def on_epoch_end(self, epoch, logs=None):
        self.steps_s.append(self._last_step - self._start)
        other = time.perf_counter() - self._last_step
        build, self._pending_val_build = self._pending_val_build, 0.0
        self.other_s.append(other - build)
        self.build_s["validation"] += build

    def on_train_end(self, logs=None):
        if self._first_step is None or not self._steps:
            return
        epoch, first = self._first_step
        build = max(0.0, first - float(np.median(self._steps)))
        self.steps_s[epoch] -= build
        self.build_s["training"] += build

    @property
    def times(self):
        """Wall seconds of each whole epoch, graph building left out."""
        return [a + b for a, b in zip(self.steps_s, self.other_s)]

    def mean(self):
        """Mean epoch time, leaving out the first epoch (graph tracing) when there are
        more."""
        times = self.times
        return float(np.mean(times[1:] if len(times) > 1 else times))


def plot_log(log, path):
    """Every logged curve of ``log`` (:func:`read_log`), one panel per quantity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    skip = {"epoch", "learning_rate", "lr"}
    names = [k for k in log if k not in skip and not k.startswith("val_")]
    names += [k[4:] for k in log if k.startswith("val_") and k[4:] not in names]
    names = sorted(names, key=lambda k: (k != "loss", k))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for key, colour in ((name, "red"), ("val_" + name, "coral")):
            points = [(e + 1, v) for e, v in zip(log["epoch"], log.get(key, []))
                      if isinstance(v, float) and not math.isnan(v)]
            if not points:
                continue
            x, y = zip(*points)
            ax.plot(x, y, colour, linewidth=2, label=key)
            smooth = _smooth(y)
            if smooth is not None:
                ax.plot(x, smooth, colour, linestyle="--", linewidth=1, label="smooth " + key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(name)
        ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


def _smooth(values):
    # Savitzky-Golay as the original, only once there are enough epochs to fit it.
    window = 5 if len(values) < 25 else 15
    if len(values) <= window:
        return None
    from scipy.signal import savgol_filter

    return savgol_filter(values, window, 3)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that first replays the monitored values this phase already
    logged (``previous``), so a resumed run's patience counts each epoch once."""

    def __init__(self, previous=(), mode="min", **kwargs):
        super().__init__(mode=mode, **kwargs)
        self.previous = [float(v) for v in previous]

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.monitor_op is None:
            self._set_monitor_op()
        for value in self.previous:
            self.wait += 1
            if self._is_improvement(value, self.best):
                self.best, self.wait = value, 0

    def on_epoch_end(self, epoch, logs=None):
        # An epoch without validation (--val-period) is no epoch of patience.
        if logs is not None and self.monitor in logs:
            super().on_epoch_end(epoch, logs)



def validation_epochs(start, end, period):
    """The 1-based epochs of ``start < e <= end`` that validate: every ``period``-th and
    the last (``fit(validation_freq=...)``)."""
    return [e for e in range(start + 1, end + 1) if e % period == 0 or e == end]


def _link(run, src, name):
    # A hard link costs no disk; through Run.write it lands atomically.
    def write(tmp):
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    run.write(name, write)


class _SaveClock:
    """Whether ``period_s`` seconds have passed since the last resume point was written
    (or since training began), for the checkpoint callbacks."""

    def __init__(self, period_s):
        self.period_s, self.since = period_s, None

    def start(self):
        if self.since is None:      # a later phase's fit keeps counting
            self.since = time.monotonic()

    def due(self):
        return time.monotonic() - (self.since or 0.0) >= self.period_s

    def saved(self):
        self.since = time.monotonic()


class EpochCheckpoint(keras.callbacks.Callback):
    """The U-Net's checkpoints: ``last_epoch.keras`` (the resume point, with the
    optimizer state) after every validated epoch, ``best_epoch.keras`` (best
    ``monitor``) and every ``save_period`` epochs a named copy, both without optimizer
    state. At the end of a phase that another one follows (``last_phase = False``, set
    by the trainer) ``last_epoch.keras`` has no optimizer state either, and is a hard
    link to that epoch's named copy when there is one: the next phase starts a fresh
    optimizer. The last phase keeps it (a resume with more epochs continues it exactly)
    unless ``final_optimizer_state`` is False; then the last epoch, when it is also the
    best, is written once as ``best_epoch.keras`` and linked.

    The named copy is ``filename`` formatted with ``epoch`` (1-based) and the logs,
    e.g. ``ep{epoch:03d}-loss{loss:.3f}-val_loss{val_loss:.3f}.keras`` as the original,
    which kept one per epoch (``save_period=1``); ``save_period=0`` keeps none.
    ``last_epoch.keras`` is written when the epoch validated (``val_loss`` in the logs)
    and ``resume_period_s`` seconds have passed since it was last written (0: at every
    validated epoch), at the end of the phase and when training stops; ``best`` carries
    over from a resumed run. Put it after the log and early stopping: the log row comes
    first.

    With ``background_final_write`` the file that ends training (the last phase's last
    epoch, without optimizer state) is written by a thread while the caller goes on,
    e.g. to evaluate the model, which must not change its weights: call :meth:`wait`
    before reading the file or exiting. The write is disk time, not CPU time, so the
    evaluation hides most of it.

    A new best is kept in memory and ``best_epoch.keras`` written only when it would
    otherwise be lost: before ``last_epoch.keras`` (which holds the same weights when
    written at the same validated epoch) moves on to a later epoch, and at the end of
    training. While a U-Net still improves at every validated epoch this halves the
    writes (each 2-6 s for the ResNet50 U-Net on a CPU), and a kill loses no best epoch:
    a best after the newest resume point is trained again by the resumed run (which
    starts there and forgets the later log rows), and a resume from
    ``last_epoch.keras`` whose epoch is the logged best calls :meth:`keep_best`.
    """

    def __init__(self, run, filename="ep{epoch:03d}-loss{loss:.3f}-val_loss{val_loss:.3f}.keras",
                 monitor="val_mIoU", mode="max", best=None, verbose=1, save_period=1,
                 resume_period_s=0.0, final_optimizer_state=True):
        super().__init__()
        if save_period < 0:
            raise ValueError(f"save_period must be 0 or more, not {save_period}")
        self.run = run if isinstance(run, Run) else Run(run)
        self.filename = filename
        self.save_period = save_period
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best = best
        self.best_epoch = None
        self.verbose = verbose
        self._pending = None        # the best epoch's weights, not yet in best_epoch.keras
        self.last_phase = True
        self.final_optimizer_state = final_optimizer_state
        self._clock = _SaveClock(resume_period_s)
        self.background_final_write = False
        self._writer = None         # (thread, errors) of a background final write

    def on_train_begin(self, logs=None):
        self._clock.start()

    def _write_final(self, write):
        """Run ``write`` now, or in a thread with ``background_final_write`` when nothing
        trains after it (the last phase)."""
        if not (self.background_final_write and self.last_phase):
            write()
            return
        errors = []

        def target():
            try:
                write()
            except BaseException as exc:    # re-raised by wait()
                errors.append(exc)

        thread = threading.Thread(target=target, name="final-checkpoint")
        thread.start()
        self._writer = (thread, errors)

    def wait(self):
        """Wait for a background final write; returns the seconds waited and re-raises
        the write's error, if any."""
        if self._writer is None:
            return 0.0
        thread, errors = self._writer
        start = time.perf_counter()
        thread.join()
        self._writer = None
        if errors:
            raise errors[0]
        return time.perf_counter() - start

    def keep_best(self, model, epoch):
        """``model``'s weights now are the best ones, of ``epoch``; written when needed."""
        self.set_model(model)
        self.best_epoch = epoch
        self._pending = model.get_weights()

    def write_best(self):
        """Write the best weights kept in memory (if any) to ``best_epoch.keras``."""
        if self._pending is None:
            return
        now = self.model.get_weights()
        self.model.set_weights(self._pending)
        try:
            self.run.save_model(self.model, "best_epoch.keras", self.best_epoch)
        finally:
            self.model.set_weights(now)
        self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        plain = None
        if self.save_period and (epoch + 1) % self.save_period == 0:
            name = self.filename.format(epoch=epoch + 1, **{"val_loss": math.nan, **logs})
            plain = self.run.save_model(self.model, name, epoch + 1)
        value = logs.get(self.monitor)
        if value is not None and not np.isnan(value) and (
                self.best is None or self.sign * value > self.sign * self.best):
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved to {value:.4f}; "
                      f"best_epoch.keras")
            self.best = float(value)
            if plain is not None:
                self.best_epoch, self._pending = epoch + 1, None
                _link(self.run, plain, "best_epoch.keras")
            else:
                self.keep_best(self.model, epoch + 1)
        end = (self.params or {}).get("epochs")
        if (("val_loss" in logs and self._clock.due()) or epoch + 1 == end
                or getattr(self.model, "stop_training", False)):
            self._clock.saved()
            if self._pending is not None and self.best_epoch != epoch + 1:
                self.write_best()       # last_epoch.keras is about to lose these weights
            if epoch + 1 != end or (self.last_phase and self.final_optimizer_state):
                self.run.save_model(self.model, "last_epoch.keras", epoch + 1,
                                    include_optimizer=True)
            elif plain is not None:     # the same weights, already written
                _link(self.run, plain, "last_epoch.keras")
            elif self._pending is not None:     # this epoch is the best: one file, two names
                self._pending = None            # (the weights the model holds now)

                def write():
                    self.run.save_model(self.model, "best_epoch.keras", self.best_epoch)
                    _link(self.run, self.run.dir / "best_epoch.keras", "last_epoch.keras")
                self._write_final(write)
            else:
                self._write_final(lambda: self.run.save_model(self.model, "last_epoch.keras",
                                                              epoch + 1))

    def on_train_end(self, logs=None):
        self.write_best()


class Checkpoint(keras.callbacks.Callback):
    """Every ``period`` epochs and after the last one, save the model (``.keras``) or
    its weights (``.weights.h5``) with the optimizer state as ``filename`` (formatted
    with the 1-based ``epoch`` and the logs): the files a resume starts from. With
    ``period_s``, an epoch before the last one is saved only when that many seconds
    have passed since the previous save (or the start)."""

    def __init__(self, run, filename, period=1, period_s=0.0):
        super().__init__()
        self.run, self.filename, self.period = run, filename, max(1, int(period))
        self._clock = _SaveClock(period_s)
        self.saved = []

    def on_train_begin(self, logs=None):
        self._clock.start()

    def on_epoch_end(self, epoch, logs=None):
        end = (self.params or {}).get("epochs")
        if (((epoch + 1) % self.period or not self._clock.due()) and epoch + 1 != end
                and not self.model.stop_training):
            return
        self._clock.saved()
        name = self.filename.format(epoch=epoch + 1, **(logs or {}))
        (self.run.dir / name).parent.mkdir(parents=True, exist_ok=True)
        self.saved.append(self.run.save_model(self.model, name, epoch + 1,
                                              include_optimizer=True))


def record_callbacks(run, tensorboard=True):
    """A run's per-epoch record, in the order they must run after the metrics: the stop
    at a non-finite loss, the CSV row, the curves, TensorBoard. Checkpoints go after
    them (the row is written first, and nothing after a non-finite loss)."""
    callbacks = [StopOnNonFinite(run.dir), EpochLog(run), CurvePlot(run)]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run.dir / "tensorboard"),
                                                     write_graph=False))
    return callbacks


def fit_in_run(run, model, data, callbacks=(), after=(), record=None, **fit):
    """``model.fit(data, **fit)`` writing ``run``'s per-epoch record, the one fit of
    every trainer. ``callbacks`` run first (those that add to the epoch's logs), then
    ``record`` (default :func:`record_callbacks`), then ``after`` (early stopping,
    checkpoints: after the log row, so a resume drops the rows past its checkpoint).
    Returns the run's log ``{column: values}`` without ``epoch``."""
    record = record_callbacks(run) if record is None else record
    model.fit(data, callbacks=[*callbacks, *record, *after], verbose=progress_verbose(), **fit)
    return {k: v for k, v in run.log().items() if k != "epoch"}
