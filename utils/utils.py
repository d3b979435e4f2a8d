"""Small helpers every entry point shares: seeding, run folders, image basics."""
import datetime
import json
from pathlib import Path

import numpy as np
from PIL import Image

# The five classes of the cherry data set, in label order (pixel value = index).
NAME_CLASSES = ["_background_", "fruit", "leaf", "trunk", "flower"]


def set_seed(seed):
    """Seed Python, NumPy and the Keras/TensorFlow generators in one call."""
    import keras

    keras.utils.set_random_seed(int(seed))


def make_run_dir(name, args=None, root="logs"):
    """Create a new, empty run folder ``root/<name>_<YYYYmmdd-HHMMSS>[_k]``.

    An existing folder is never reused: a numeric suffix is added instead. When
    ``args`` (an ``argparse.Namespace`` or a dict) is given it is written as
    ``args.json``. Returns the folder as a :class:`pathlib.Path`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{name}_{stamp}"
    run_dir, k = base, 1
    while True:
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            k += 1
            run_dir = Path(f"{base}_{k}")
    if args is not None:
        write_json(run_dir / "args.json", vars(args) if hasattr(args, "__dict__") else dict(args))
    return run_dir


def write_json(path, data):
    """Write ``data`` as indented JSON; paths and NumPy scalars become plain values."""
    def default(o):
        if isinstance(o, (np.integer,)):
            return int(o)
        if isinstance(o, (np.floating,)):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    Path(path).write_text(json.dumps(data, indent=2, default=default) + "\n")


def cvtColor(image):
    """Return an RGB PIL image; grayscale, palette and RGBA photos are converted."""
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def preprocess_input(image):
    """Scale 0..255 pixels to 0..1, as the original U-Net input does."""
    return np.asarray(image, dtype=np.float32) / 255.0


def resize_image(image, size):
    """Letterbox ``image`` (PIL) into ``size`` = (w, h) on a grey (128) canvas.

    Returns the new image and the (new_w, new_h) of the pasted photo, so callers can
    crop the grey bars off predictions again.
    """
    iw, ih = image.size
    w, h = size
    scale = min(w / iw, h / ih)
    nw, nh = int(iw * scale), int(ih * scale)
    image = image.resize((nw, nh), Image.BICUBIC)
    canvas = Image.new("RGB", size, (128, 128, 128))
    canvas.paste(image, ((w - nw) // 2, (h - nh) // 2))
    return canvas, nw, nh


def jit_compile_default():
    """XLA pays off on a GPU; on a CPU its compile time dwarfs short runs."""
    import tensorflow as tf

    return "auto" if tf.config.list_physical_devices("GPU") else False


def set_mixed_precision(enabled):
    """bfloat16 compute on a CPU, float16 on a GPU; float32 when not enabled."""
    import keras
    import tensorflow as tf

    if not enabled:
        keras.mixed_precision.set_global_policy("float32")
        return "float32"
    policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


STRATEGIES = ("default", "mirrored", "multiworker")


def get_strategy(name="default"):
    """A ``tf.distribute`` strategy: ``mirrored`` spans the local GPUs, ``multiworker``
    the machines named in ``TF_CONFIG``; ``default`` is the plain single-device one."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def is_chief(strategy=None):
    """Whether this process writes the run's files (checkpoints, logs, plots).

    Under ``multiworker`` every worker runs the same script and computes the same
    weights; only one may write: the task ``chief``, or worker 0 when the cluster in
    ``TF_CONFIG`` names no chief. Every other strategy has one process: always True.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def add_common_training_args(parser, seed=11):
    """Options every training script shares: seed, logs, precision, strategy."""
    parser.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
    parser.add_argument("--logs-dir", default="logs",
                        help="parent folder of the new run folder (default logs/)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="bfloat16 on a CPU, float16 on a GPU (default off: float32)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="default",
                        help="tf.distribute strategy: mirrored = all local GPUs, "
                             "multiworker = machines in TF_CONFIG (default: one device)")
    return parser
