"""Callbacks for U-Net training: loss history, learning-rate decay, validation mIoU,
checkpoints."""
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from utils.utils_metrics import fast_hist, per_class_iu


class LossHistory(keras.callbacks.Callback):
    """Append ``loss`` / ``val_loss`` to text files and redraw the loss plot each epoch.

    Writes ``epoch_loss.txt``, ``epoch_val_loss.txt`` (one value per line, as the
    original) and ``epoch_loss.png`` in ``log_dir``; values already in the text files
    (a resumed run) are kept and continued.
    """

    def __init__(self, log_dir, val_loss_flag=True):
        super().__init__()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.val_loss_flag = val_loss_flag
        self.losses = self._read("epoch_loss.txt")
        self.val_loss = self._read("epoch_val_loss.txt") if val_loss_flag else []

    def _read(self, name):
        path = self.log_dir / name
        if not path.is_file():
            return []
        return [float(v) for v in path.read_text().split()]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.losses.append(float(logs.get("loss", np.nan)))
        with open(self.log_dir / "epoch_loss.txt", "a") as f:
            f.write(f"{self.losses[-1]}\n")
        if self.val_loss_flag:
            self.val_loss.append(float(logs.get("val_loss", np.nan)))
            with open(self.log_dir / "epoch_val_loss.txt", "a") as f:
                f.write(f"{self.val_loss[-1]}\n")
        self.loss_plot()

    def loss_plot(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = np.arange(1, len(self.losses) + 1)
        fig, ax = plt.subplots()
        curves = [("train loss", self.losses, "red", "green")]
        if self.val_loss_flag:
            curves.append(("val loss", self.val_loss, "coral", "#8B4513"))
        for label, values, colour, smooth_colour in curves:
            ax.plot(epochs, values, colour, linewidth=2, label=label)
            smooth = _smooth(values)
            if smooth is not None:
                ax.plot(epochs, smooth, smooth_colour, linestyle="--", linewidth=2,
                        label="smooth " + label)
        ax.grid(True)
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        ax.set_title("A Loss Curve")
        ax.legend(loc="upper right")
        fig.savefig(self.log_dir / "epoch_loss.png", dpi=100)
        plt.close(fig)


def _smooth(values):
    # Savitzky-Golay as the original, only once there are enough epochs to fit it.
    window = 5 if len(values) < 25 else 15
    if len(values) <= window:
        return None
    try:
        from scipy.signal import savgol_filter
    except ImportError:
        return None
    return savgol_filter(values, window, 3)


def _get_lr(optimizer):
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class ExponentDecayScheduler(keras.callbacks.Callback):
    """Multiply the learning rate by ``decay_rate`` after every epoch.

    The rate of epoch ``e`` is ``initial_lr * decay_rate ** (e - start_epoch)``, computed
    from the epoch number rather than accumulated, so a resumed run gets the same rate.
    With ``initial_lr=None`` the optimizer's rate at the start of training is used.
    """

    def __init__(self, decay_rate, initial_lr=None, start_epoch=0, verbose=0):
        super().__init__()
        self.decay_rate = decay_rate
        self.initial_lr = initial_lr
        self.start_epoch = start_epoch
        self.verbose = verbose
        self.learning_rates = []

    def on_train_begin(self, logs=None):
        if self.initial_lr is None:
            self.initial_lr = _get_lr(self.model.optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.initial_lr * self.decay_rate ** max(epoch - self.start_epoch, 0)
        self.model.optimizer.learning_rate.assign(lr)
        self.learning_rates.append(lr)
        if self.verbose > 0:
            print(f"Epoch {epoch + 1}: learning rate {lr:.4g}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = _get_lr(self.model.optimizer)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that, in a resumed run, first replays the monitored values the
    phase already logged, so the patience counts from where the run stopped."""

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


class MIoUCallback(keras.callbacks.Callback):
    """Mean IoU on a validation dataset after every epoch, logged as ``val_mIoU``.

    ``dataset`` yields ``(images, one-hot targets)`` with the extra ignore channel, as
    :func:`utils.dataloader.build_dataset`; ignored pixels are left out, and the IoU rule
    is ``get_miou``'s (:mod:`utils.utils_metrics`). Put this
    callback before checkpoints and loggers so they see the value.
    """

    def __init__(self, dataset, num_classes, name="val_mIoU", verbose=1):
        super().__init__()
        self.dataset = dataset
        self.num_classes = num_classes
        self.name = name
        self.verbose = verbose
        self.history = []

    def compute(self):
        n = self.num_classes
        hist = np.zeros((n, n), np.int64)
        for images, targets in self.dataset:
            probs = self.model(images, training=False)
            preds = np.argmax(keras.ops.convert_to_numpy(probs), axis=-1).reshape(-1)
            labels = np.argmax(np.asarray(targets), axis=-1).reshape(-1)
            hist += fast_hist(labels, preds, n)
        iou = per_class_iu(hist)
        return iou, float(np.nanmean(iou))

    def on_epoch_end(self, epoch, logs=None):
        iou, miou = self.compute()
        self.history.append(miou)
        if logs is not None:
            logs[self.name] = miou
        if self.verbose:
            per_class = " ".join(f"{v:.3f}" for v in iou)
            print(f"Epoch {epoch + 1}: {self.name} {miou:.4f} (per class {per_class})")


def tensorboard(log_dir):
    """A TensorBoard callback, or None (with a note) when the package is not installed."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        print("tensorboard is not installed: no TensorBoard logs (pip install tensorboard); "
              "the CSV log and loss plot are still written.")
        return None
    return keras.callbacks.TensorBoard(str(log_dir), write_graph=False)


def save_without_optimizer(model, path):
    """``model.save`` minus the optimizer state: a third of the size with Adam, like the
    original's weights-only checkpoints, and still a whole loadable model."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        model.save(path)
        return
    model.optimizer = None
    try:
        model.save(path)
    finally:
        model.optimizer = optimizer


def _link_or_copy(src, dst):
    # A hard link costs no disk; the replace keeps the old file valid until the new one
    # is in place.
    tmp = dst.with_name(dst.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class EpochCheckpoint(keras.callbacks.Callback):
    """Save the model (without optimizer state) after every epoch as ``last_epoch.keras``,
    keep ``best_epoch.keras`` (best ``monitor`` so far) beside it, and every
    ``save_period`` epochs also a named copy.

    The named copy is ``filename`` formatted with ``epoch`` (1-based) and the logs,
    e.g. ``ep{epoch:03d}-loss{loss:.3f}-val_loss{val_loss:.3f}.keras`` as the original,
    which kept one per epoch (``save_period=1``); ``save_period=0`` keeps none. Copies
    are hard links where the file system allows, so they cost no extra disk.
    ``best`` carries over from a resumed run.
    """

    def __init__(self, run_dir, filename="ep{epoch:03d}-loss{loss:.3f}-val_loss{val_loss:.3f}.keras",
                 monitor="val_mIoU", mode="max", best=None, verbose=1, save_period=1):
        super().__init__()
        if save_period < 0:
            raise ValueError(f"save_period must be 0 or more, not {save_period}")
        self.run_dir = Path(run_dir)
        self.filename = filename
        self.save_period = save_period
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best = best
        self.best_epoch = None
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        named = self.save_period and (epoch + 1) % self.save_period == 0
        if named:
            path = self.run_dir / self.filename.format(epoch=epoch + 1, **logs)
            if path.exists():
                raise FileExistsError(f"{path} exists; refusing to overwrite a checkpoint")
            save_without_optimizer(self.model, path)
            _link_or_copy(path, self.run_dir / "last_epoch.keras")
        else:
            # Written beside and then moved over, so a crash never leaves a broken file.
            path = self.run_dir / "last_epoch.keras"
            tmp = path.with_name("last_epoch.tmp.keras")
            save_without_optimizer(self.model, tmp)
            os.replace(tmp, path)
        value = logs.get(self.monitor)
        if value is not None and not np.isnan(value) and (
                self.best is None or self.sign * value > self.sign * self.best):
            if self.verbose:
                print(f"Epoch {epoch + 1}: {self.monitor} improved to {value:.4f}; "
                      f"saved best_epoch.keras")
            self.best, self.best_epoch = float(value), epoch + 1
            _link_or_copy(path, self.run_dir / "best_epoch.keras")
