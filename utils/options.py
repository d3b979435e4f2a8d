"""Options the trainers and benchmarks share, declared once: one name, type and help;
defaults that differ by script are parameters. Each returns the parser (or group)."""
from utils.distribute import STRATEGIES
from utils.errors import writable_dir
from utils.precision import PRECISIONS


def add_input_shape(parser, default, help="network input height and width"):
    parser.add_argument("--input-shape", type=int, nargs=2, default=default, metavar=("H", "W"),
                        help=help)
    return parser


def add_seed(parser, default=11, help=None):
    parser.add_argument("--seed", type=int, default=default,
                        help=help or f"random seed (default {default})")
    return parser


def add_logs_dir(parser):
    parser.add_argument("--logs-dir", default="logs", type=writable_dir,
                        help="parent folder of the new run folder (default logs/)")
    return parser


def add_resume_period(parser, point, last):
    parser.add_argument("--resume-period-min", type=float, default=0, metavar="M",
                        help=f"write {point} only when M minutes of training have passed since "
                             f"the previous one, so a kill loses at most about M minutes; {last}")
    return parser


def add_run_options(parser, seed=11, may_change=None, compute=True,
                    checkpoint="its newest complete checkpoint (weights, optimizer, epoch)"):
    """A trainer's run group: ``--seed``, ``--logs-dir``, ``--run-eagerly``; with
    ``compute``, ``--precision`` (``--mixed-precision``) and ``--strategy``; with
    ``may_change`` (the dests a resumed run may give again with a new value, as
    :func:`utils.run.resume_args` takes them), ``--resume RUN_DIR`` from ``checkpoint``."""
    add_seed(parser, seed)
    add_logs_dir(parser)
    parser.add_argument("--run-eagerly", action="store_true",
                        help="no tf.function: run the train step eagerly (debugging; faster for "
                             "very short runs, with no graph tracing, slower per step)")
    if compute:
        parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                            help="compute precision: auto = bfloat16 only on a CPU that computes "
                                 "it natively and where a start-up probe shows it faster, "
                                 "float16 on a GPU with tensor cores, float32 otherwise "
                                 "(default float32, the original's)")
        parser.add_argument("--mixed-precision", dest="precision", action="store_const",
                            const="auto", help="the same as --precision auto")
        parser.add_argument("--strategy", choices=STRATEGIES, default="default",
                            help="tf.distribute strategy: mirrored = all local GPUs, "
                                 "multiworker = machines in TF_CONFIG (default: one device)")
    if may_change is not None:
        flags = ", ".join("--" + k.replace("_", "-") for k in may_change) or "none"
        parser.add_argument("--resume", default=None, metavar="RUN_DIR",
                            help=f"continue the run in RUN_DIR from {checkpoint} with the "
                                 f"options of its args.json, writing into the same folder; of "
                                 f"the others only {flags} may be given again with a new value")
    return parser
