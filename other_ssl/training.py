"""Pieces the baseline training scripts share: optimiser, learning-rate schedule,
steps, resume."""
import functools

import keras

from utils.optimizers import SCHEDULES, Adan, FusedAdam
from utils.optimizers import learning_rate_schedule as _learning_rate_schedule

OPTIMIZERS = ("adam", "sgd", "adan")
# What a method without its own ``schedule`` trains with: the original's constant
# Adam 1e-3. A method's ``schedule`` class attribute overrides any of these.
SCHEDULE_DEFAULTS = {"learning_rate": 1e-3, "lr_schedule": "constant", "lr_decay": 1.0,
                     "lr_decay_epochs": 1, "warmup_epochs": 0.0, "min_learning_rate": 0.0}
# CMID's authors warm up for 10 of their 400 epochs; a shorter run warms up for at most
# this share of its steps, so a few-epoch run is not all warm-up.
MAX_WARMUP_FRACTION = 10 / 400
# :func:`utils.optimizers.learning_rate_schedule` with that cap.
learning_rate_schedule = functools.partial(_learning_rate_schedule,
                                           max_warmup_fraction=MAX_WARMUP_FRACTION)


def epoch_steps(n_images, batch_size, cap=None):
    """Steps per epoch over ``n_images`` and whether ``cap`` shortened it (then the
    dataset must repeat, so each epoch continues where the last one stopped)."""
    steps = n_images // batch_size
    capped = cap is not None and cap < steps
    return (cap if capped else steps), capped


def make_optimizer(name="adam", learning_rate=1e-3, weight_decay=0.0, momentum=0.9):
    """Adam (the original's, Keras defaults), SGD with momentum (SimSiam's published
    choice) or Adan (CMID's authors; no decay on biases and BN); ``weight_decay`` is
    decoupled. ``learning_rate``
    is a number or a schedule (:func:`learning_rate_schedule`)."""
    wd = weight_decay or None
    if name == "adam":
        return FusedAdam(learning_rate=learning_rate, weight_decay=wd)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                                    weight_decay=wd)
    if name == "adan":
        return Adan(learning_rate=learning_rate, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


CHECKPOINT = "checkpoints/ep{epoch:03d}-loss{loss:.4f}.weights.h5"
# Options a resumed run of a baseline trainer may give again with a new value.
MAY_CHANGE = ("epochs", "save_period")


def resume(run, model, dataset):
    """Continue ``run`` from its newest complete checkpoint: load the weights and
    optimizer state into ``model`` (compiled) and drop the log rows after it. Returns the
    epoch to start from (0 in a new run)."""
    from utils.run import newest_checkpoint

    path, epoch = newest_checkpoint(run.dir.glob("checkpoints/ep*.weights.h5"))
    if path is None:
        if run.log():
            print(f"{run.dir}: no complete checkpoint; training starts again at epoch 1.")
        run.truncate_log(0)
        return 0
    # Build every layer and the optimizer's slots before loading into them.
    model.fit(dataset.take(1), epochs=1, steps_per_epoch=1, verbose=0)
    model.load_weights(str(path))
    run.truncate_log(epoch)
    print(f"Resuming {run.dir} from {path.name} (epoch {epoch + 1}).")
    return epoch
