"""Pieces both baseline training scripts share: optimiser, checkpoints, plots."""
from pathlib import Path

import keras

OPTIMIZERS = ("adam", "sgd")


def epoch_steps(n_images, batch_size, cap=None):
    """Steps per epoch over ``n_images`` and whether ``cap`` shortened it (then the
    dataset must repeat, so each epoch continues where the last one stopped)."""
    steps = n_images // batch_size
    capped = cap is not None and cap < steps
    return (cap if capped else steps), capped


def make_optimizer(name="adam", learning_rate=1e-3, weight_decay=0.0, momentum=0.9):
    """Adam (the original's, Keras defaults) or SGD with momentum (SimSiam's published
    choice); ``weight_decay`` is decoupled (Keras' ``weight_decay``)."""
    wd = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate, weight_decay=wd)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                                    weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


class PeriodicCheckpoint(keras.callbacks.Callback):
    """Saves the whole model's weights every ``period`` epochs and after the last one,
    as ``ep{epoch:03d}-loss{loss:.4f}.weights.h5`` in ``folder``."""

    def __init__(self, folder, period=10):
        super().__init__()
        self.folder, self.period = Path(folder), max(1, int(period))
        self.saved = []

    def on_epoch_end(self, epoch, logs=None):
        last = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.period and not last:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        loss = (logs or {}).get("loss", float("nan"))
        path = self.folder / f"ep{epoch + 1:03d}-loss{loss:.4f}.weights.h5"
        self.model.save_weights(str(path))
        self.saved.append(path)


def plot_history(history, path, keys=("loss",), secondary=()):
    """One panel per key group: ``keys`` (and their ``val_`` twins) on the left axis,
    ``secondary`` on a right axis. Returns the path, or ``None`` with nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history.get(keys[0]):
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = range(1, len(history[keys[0]]) + 1)
    for key in keys:
        for name in (key, "val_" + key):
            if history.get(name):
                ax.plot(epochs, history[name], label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(", ".join(keys))
    lines, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for i, key in enumerate(secondary):
            if history.get(key):
                ax2.plot(epochs, history[key], "--", color=f"C{len(lines) + i}", label=key)
        ax2.set_ylabel(", ".join(secondary))
        more_lines, more_labels = ax2.get_legend_handles_labels()
        lines, labels = lines + more_lines, labels + more_labels
    ax.legend(lines, labels, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
