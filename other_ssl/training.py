"""Pieces both baseline training scripts share: optimiser, steps, resume."""
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


CHECKPOINT = "checkpoints/ep{epoch:03d}-loss{loss:.4f}.weights.h5"


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
