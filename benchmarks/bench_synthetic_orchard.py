"""Speed of the synthetic orchard generator: archive photos written per second.

Runs ``generate_orchard`` end to end (trees, backgrounds, rendering, JPEG encoding,
writing) into a temporary folder, once per ``--workers`` value, and reports photos per
second of wall time. With one worker it also reports the CPU time per photo, which is
less sensitive to other load on a shared machine.

    python benchmarks/bench_synthetic_orchard.py                  # 288x512, one core
    python benchmarks/bench_synthetic_orchard.py --workers 1 2
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_processing.synthetic_orchard import generate_orchard  # noqa: E402
from utils.options import add_seed  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, nargs=2, default=[288, 512], metavar=("H", "W"))
    p.add_argument("--cameras", type=int, default=1)
    p.add_argument("--presets", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--times", nargs="+", default=["09", "12", "15"])
    p.add_argument("--start", default="2021-01-01")
    p.add_argument("--end", default="2021-05-04", help="(the shortest season the stages allow)")
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    add_seed(p, 0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from benchmarks.timing import machine_line

    print(machine_line(), flush=True)
    rows = []
    for workers in args.workers:
        with tempfile.TemporaryDirectory() as tmp:
            load = os.getloadavg()[0]
            t0, c0 = time.perf_counter(), time.process_time()
            res = generate_orchard(Path(tmp) / "o", cameras=args.cameras, presets=args.presets,
                                   times=args.times, start=args.start, end=args.end,
                                   image_size=tuple(args.image_size), n_train=0, n_val=0,
                                   n_test=0, seed=args.seed, workers=workers, progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = res["n_archive"]
        rows.append(dict(workers=workers, images=n, seconds=round(wall, 1),
                         images_per_s=round(n / wall, 1),
                         cpu_ms_per_image=round(1000 * cpu / n, 1) if workers == 1 else None,
                         load_before=round(load, 1)))
    print("command: python benchmarks/bench_synthetic_orchard.py "
          + " ".join(sys.argv[1:] if argv is None else argv))
    h, w = args.image_size
    for r in rows:
        cpu = f", {r['cpu_ms_per_image']} ms CPU per photo" if r["cpu_ms_per_image"] else ""
        print(f"{h}x{w}, {r['workers']} worker(s): {r['images']} photos in {r['seconds']} s = "
              f"{r['images_per_s']} photos/s{cpu} (load average before: {r['load_before']})")
    return {"rows": rows, "image_size": [h, w]}


if __name__ == "__main__":
    main()
