"""What a four-class pair prediction got right: the view half and the stage half.

The classification distance's classes cross two questions (original ``make_dataset``):
0 same view, same stage; 1 same view, different stage; 2 different view, same stage;
3 different view, different stage. Pair accuracy alone does not say which was learned:
telling the view apart is easy (the cameras never move), the stage is the prior PDE is
about. Each metric below reads the argmax of prediction and target and scores one
question (chance 0.5 on balanced pairs).
"""
import keras
from keras import ops


def _classes(y_true, y_pred):
    return ops.argmax(y_true, axis=-1), ops.argmax(y_pred, axis=-1)


@keras.saving.register_keras_serializable(package="pde")
def view_acc(y_true, y_pred):
    """1 where the prediction is right about "same view" (classes 0-1 against 2-3)."""
    true, pred = _classes(y_true, y_pred)
    return ops.cast(ops.equal(true // 2, pred // 2), "float32")


@keras.saving.register_keras_serializable(package="pde")
def stage_acc(y_true, y_pred):
    """1 where the prediction is right about "same stage" (classes 0, 2 against 1, 3)."""
    true, pred = _classes(y_true, y_pred)
    return ops.cast(ops.equal(true % 2, pred % 2), "float32")
