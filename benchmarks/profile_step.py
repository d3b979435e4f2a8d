"""Where a training step's time goes, op type by op type (TensorFlow's profiler).

Builds the PDE or U-Net step of ``bench_pde_step.py`` / ``bench_unet_step.py``, runs
its warm-up, records ``--steps`` steps with ``tf.profiler.experimental`` and sums the
executor's op events by op type (``_MklNativeConv2D``, ``FusedBatchNormGradV3``, ...).
Ops on the two inter-op threads may overlap, so the shares are of summed op time, not
of the wall time, which is printed beside them.

    python benchmarks/profile_step.py pde --input-shape 64 128 --batch-size 16 --pool gap
    python benchmarks/profile_step.py unet --mode unfrozen --precision bfloat16
"""
import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from benchmarks import bench_pde_step, bench_unet_step  # noqa: E402
from benchmarks.timing import BENCH_PRECISIONS, machine_line  # noqa: E402
from utils.options import add_input_shape, add_seed  # noqa: E402


def op_times(logdir):
    """Summed op time in seconds by op type, from the profile under ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.Counter()
    for path in Path(logdir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    # Executor op events are "<node name>:<op type>".
                    if ":" in name and "::" not in name:
                        totals[name.rsplit(":", 1)[1]] += event.duration_ps * 1e-12
    return totals


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=("pde", "unet"))
    add_input_shape(p, None, "default 64 128")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default 16 (pde), 8 (unet)")
    p.add_argument("--precision", choices=[p for p in BENCH_PRECISIONS if p != "both"],
                   default="float32", help="as bench_pde_step.py's (default float32)")
    p.add_argument("--bn", choices=("fused", "keras"), default="fused")
    p.add_argument("--pool", choices=("flatten", "gap"), default="gap")
    p.add_argument("--shared-towers", action="store_true")
    p.add_argument("--freeze-stages", nargs="+", default=[], metavar="STAGE",
                   help="PDE only: ResNet50 stages whose kernels stay fixed (the demo: conv1 "
                        "res2 res3)")
    p.add_argument("--mode", choices=bench_unet_step.MODES, default="unfrozen",
                   help="U-Net only (default unfrozen)")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (default 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--top", type=int, default=15, help="op types listed (default 15)")
    add_seed(p, 0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    print(machine_line(), flush=True)
    args.input_shape = args.input_shape or [64, 128]
    args.batch_size = args.batch_size or (16 if args.model == "pde" else 8)
    if args.model == "pde":
        step, _, _ = bench_pde_step.build_step(args, args.precision, args.bn)
        what = f"PDE step, pool {args.pool}, {'shared' if args.shared_towers else 'two'} towers"
    else:
        step, _, _ = bench_unet_step.build_step(args, args.mode, args.precision, args.bn)
        what = f"U-Net step, {args.mode}"
    for _ in range(args.warmup):
        step()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = (time.perf_counter() - start) / args.steps
        tf.profiler.experimental.stop()
        totals = op_times(logdir)
    summed = sum(totals.values()) / args.steps
    h, w = args.input_shape
    print(f"{what}, {h}x{w}, batch {args.batch_size}, {args.precision}, {args.bn} BN: "
          f"{wall * 1000:.0f} ms wall per step, {summed * 1000:.0f} ms of summed op time")
    for op, seconds in totals.most_common(args.top):
        print(f"  {op:34s} {seconds / args.steps * 1000:7.1f} ms  {100 * seconds / args.steps / summed:5.1f} %")
    rest = summed - sum(s for _, s in totals.most_common(args.top)) / args.steps
    print(f"  {'(other op types)':34s} {rest * 1000:7.1f} ms  {100 * rest / summed:5.1f} %")
    return totals


if __name__ == "__main__":
    main()
