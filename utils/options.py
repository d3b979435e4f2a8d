"""Command-line options the trainers and benchmarks share, declared once, so one
concept has one name, type and help everywhere. Defaults that differ by script are
parameters; each function returns the parser (or group) it added to."""
from utils.distribute import STRATEGIES
from utils.errors import writable_dir
from utils.precision import PRECISIONS


def add_input_shape(parser, default, help=None):
    """``--input-shape H W``: the network input (``help``: what it is, the original's)."""
    parser.add_argument("--input-shape", type=int, nargs=2, default=default, metavar=("H", "W"),
                        help=help or "network input height and width")
    return parser


def add_seed(parser, default=11, help=None):
    parser.add_argument("--seed", type=int, default=default,
                        help=help or f"random seed (default {default})")
    return parser


def add_logs_dir(parser):
    parser.add_argument("--logs-dir", default="logs", type=writable_dir,
                        help="parent folder of the new run folder (default logs/)")
    return parser


def add_run_eagerly(parser):
    parser.add_argument("--run-eagerly", action="store_true",
                        help="no tf.function: run the train step eagerly (debugging; faster for "
                             "very short runs, with no graph tracing, slower per step)")
    return parser


def add_resume(parser, may_change, checkpoint="its newest complete checkpoint"):
    """``--resume RUN_DIR``; ``may_change``: the option names (dests) a resumed run may
    give again with a new value (:func:`utils.run.resume_args` takes the same)."""
    flags = ", ".join("--" + k.replace("_", "-") for k in may_change) or "none"
    parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                        help=f"continue the run in RUN_DIR from {checkpoint} (weights, optimizer, "
                             f"epoch) with the options of its args.json, writing into the same "
                             f"folder; of the others only {flags} may be given again with a "
                             f"new value")
    return parser


def add_compute_options(parser):
    """``--precision`` (and its shorthand ``--mixed-precision``), ``--strategy``."""
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="compute precision: auto = bfloat16 only on a CPU that computes "
                             "it natively and where a start-up probe shows it faster, float16 "
                             "on a GPU with tensor cores, float32 otherwise (default float32, "
                             "the original's)")
    parser.add_argument("--mixed-precision", dest="precision", action="store_const",
                        const="auto", help="the same as --precision auto")
    parser.add_argument("--strategy", choices=STRATEGIES, default="default",
                        help="tf.distribute strategy: mirrored = all local GPUs, "
                             "multiworker = machines in TF_CONFIG (default: one device)")
    return parser


def add_run_options(parser, seed=11, may_change=None, compute=True,
                    checkpoint="its newest complete checkpoint"):
    """The run group of a trainer: ``--seed``, ``--logs-dir``, ``--run-eagerly``, with
    ``compute`` ``--precision``/``--mixed-precision``/``--strategy``, and with
    ``may_change`` (not None) ``--resume`` (:func:`add_resume`)."""
    add_seed(parser, seed)
    add_logs_dir(parser)
    add_run_eagerly(parser)
    if compute:
        add_compute_options(parser)
    if may_change is not None:
        add_resume(parser, may_change, checkpoint)
    return parser
