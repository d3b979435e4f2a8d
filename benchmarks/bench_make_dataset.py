"""Benchmark step 3 (make_dataset): wall time and peak memory of the pair index.

Synthetic stage image names only (no image files): cameras x 5 presets x 3 times x
5 stages x 12 dates, cut to N names. Each size runs ``make_dataset.main`` in a fresh
Python process, which reports its own peak resident memory (``ru_maxrss``, so the
interpreter and NumPy are included) and the wall time of ``main`` (listing, parsing,
sampling, shuffling, saving both .npy files)::

    python benchmarks/bench_make_dataset.py --sizes 3100 20000 --per-class 200000
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def synthetic_names(n):
    """``n`` stage image names of the original form (9-character camera ids)."""
    names = []
    camera = 0
    while len(names) < n:
        for preset in range(1, 6):
            for hour in ("09", "12", "15"):
                for stage in range(5):
                    for day in range(1, 13):
                        names.append(f"E{88570046 + camera:08d}p{preset}t{hour}i{stage}"
                                     f"d2021-{stage + 1:02d}-{day:02d}_{hour}.jpg")
        camera += 1
    return names[:n]


def _child(names_file, per_class, out_dir, seed):
    import resource

    from data_processing import make_dataset

    t0 = time.perf_counter()
    res = make_dataset.main(["--names-file", names_file, "--per-class", str(per_class),
                             "--x-out", str(Path(out_dir) / "x.npy"),
                             "--y-out", str(Path(out_dir) / "y.npy"), "--seed", str(seed)])
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print("RESULT " + json.dumps({"wall_s": wall, "peak_rss_mb": peak_mb,
                                  "pairs": sum(res["counts"].values()),
                                  "n_images": res["n_images"]}))


def run_one(n, per_class, seed=0):
    with tempfile.TemporaryDirectory() as tmp:
        names_file = Path(tmp) / "names.txt"
        names_file.write_text("\n".join(synthetic_names(n)) + "\n")
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(names_file),
                               "--per-class", str(per_class), "--out-dir", tmp, "--seed", str(seed)],
                              capture_output=True, text=True, cwd=ROOT)
        total = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(proc.stderr)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        result = json.loads(line[len("RESULT "):])
        result.update(names=n, process_s=total)
        return result


def parse_args(argv=None):
    from utils.options import add_seed

    parser = argparse.ArgumentParser(description="Benchmark make_dataset on synthetic names.")
    parser.add_argument("--sizes", nargs="+", type=int, default=[3100, 20000],
                        help="numbers of image names (3,100: about the original's data set)")
    parser.add_argument("--per-class", type=int, default=200000, help="pairs per class (original: 200000)")
    add_seed(parser, 0)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        _child(args.child, args.per_class, args.out_dir, args.seed)
        return {}
    rows = [run_one(n, args.per_class, args.seed) for n in args.sizes]
    from benchmarks.timing import machine_line

    print(machine_line())
    print("command: python benchmarks/bench_make_dataset.py --sizes "
          + " ".join(map(str, args.sizes)) + f" --per-class {args.per_class}")
    print(f"{'names':>7} {'possible pairs':>15} {'sampled':>9} {'main() s':>9} "
          f"{'process s':>10} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['names']:>7} {r['names'] * (r['names'] - 1) // 2:>15,} {r['pairs']:>9,} "
              f"{r['wall_s']:>9.2f} {r['process_s']:>10.2f} {r['peak_rss_mb']:>12.0f}")
    print("peak RSS: ru_maxrss of a fresh process per size (interpreter + NumPy included); "
          "main() s: make_dataset.main only; process s: with interpreter start and imports.")
    return {"rows": rows}


if __name__ == "__main__":
    main()
