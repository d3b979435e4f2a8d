"""Step 2: copy (or link) each stage image of the archive into one folder.

For every camera in the phenology file, preset and time of day, the stage windows of
:func:`date_pro.get_date_list` pick the archive photos; each one that exists becomes
``<out>/<camera>p<preset>t<HH>i<stage>d<YYYY-MM-DD>_<HH>.jpg``, and ``manifest.csv``
lists them::

    python data_processing/select_img.py --archive ROOT --phenology data_processing/phenology.example.toml --out out/

Existing output files are kept when their content is identical and are never
overwritten when it differs (an error, or ``--skip-existing``).
"""
import argparse
import concurrent.futures
import csv
import errno
import filecmp
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from data_processing.date_pro import (DEFAULT_PHENOLOGY_FILE, DEFAULT_PRESETS,  # noqa: E402
                                      DEFAULT_TIMES, _time_slot, archive_photos, camera_folder,
                                      format_table, get_date_list, load_phenology, stage_windows)
from data_processing.names import StageImageName, is_image_file, parse_archive_name  # noqa: E402
from utils.errors import OutputExists, UserError, writable_dir  # noqa: E402
from utils.run import removed_on_error, write_atomic, write_json  # noqa: E402

MANIFEST_FIELDS = ["file", "camera", "preset", "time", "stage", "date"]
# What was left out and why (beside manifest.csv), rewritten by every run.
REPORT_FILE = "select_report.json"


def plan_selection(phenology, archive, cameras=None, presets=DEFAULT_PRESETS, times=DEFAULT_TIMES,
                   notes=None):
    """``[(source path, StageImageName), ...]`` for every existing stage image.

    Every camera folder is checked before anything is listed, so a typo fails at once.
    What is left out is said, not skipped silently: archive photos whose names do not
    parse, camera folders the phenology file does not list, and stages that select no
    photo of a camera (with the reason). Each is a warning and a line in ``notes`` (a
    list) when given.
    """
    notes = [] if notes is None else notes
    cameras = list(cameras or phenology.cameras)
    for camera in cameras:
        if camera not in phenology.cameras:
            raise UserError(phenology.path or "--phenology",
                            f"camera {camera!r} is not in [cameras] (it lists: "
                            f"{', '.join(phenology.cameras)})", "add its bud date or fix --cameras")
    folders = {camera: camera_folder(archive, camera) for camera in cameras}
    unlisted = sorted(p.name for p in Path(archive).iterdir()
                      if p.is_dir() and p.name not in phenology.cameras)
    for name in unlisted:
        n = sum(1 for f in (Path(archive) / name).iterdir() if is_image_file(f))
        _note(notes, "camera_not_in_phenology", f"{Path(archive) / name}: camera {name!r} is "
              f"in the archive ({n} photos) but not in [cameras] of {phenology.path}; its "
              f"photos are not selected (add its bud date to select them)", camera=name, count=n)
    jobs = []
    for camera in cameras:
        photos, unparsed = archive_photos(folders[camera])
        if unparsed:
            _note(notes, "unparsed_names", f"{folders[camera]}: {len(unparsed)} photo(s) whose "
                  f"names do not parse as <preset>_<YYYY-MM-DD>_<HH>.jpg are not selected, "
                  f"e.g. {Path(unparsed[0]).name}", camera=camera, count=len(unparsed),
                  files=[Path(u).name for u in unparsed[:20]])
        existing = set(photos.values())
        per_stage = [0] * len(phenology.stages)
        for point in presets:
            for time in times:
                lists = get_date_list(phenology.cameras[camera], point, time,
                                      str(folders[camera]), phenology, photos)
                for stage, paths in enumerate(lists):
                    for path in paths:
                        if path in existing:
                            src = parse_archive_name(path)
                            jobs.append((path, StageImageName(camera, int(point), time, stage,
                                                              src.date, src.hour)))
                            per_stage[stage] += 1
        _explain_empty_stages(notes, phenology, camera, folders[camera], photos, per_stage,
                              presets, times)
    return jobs


def _note(notes, kind, message, **fields):
    warnings.warn(message, stacklevel=3)
    notes.append({"kind": kind, "message": message, **fields})


def _explain_empty_stages(notes, phenology, camera, folder, photos, per_stage, presets, times):
    """A warning for each stage of ``camera`` that selected nothing, with the reason."""
    wanted = [parse_archive_name(p) for p in photos.values()]
    wanted = [n for n in wanted if n.preset in presets and n.hour in times]
    first = min((n.date for n in wanted), default=None)
    last = max((n.date for n in wanted), default=None)
    windows = stage_windows(phenology, camera)
    for i, ((name, start, end), count) in enumerate(zip(windows, per_stage)):
        if count:
            continue
        if last is None:
            why = f"the archive has no photo of presets {list(presets)} at {list(times)}"
        elif start is None:
            why = "no photo in the season"
        elif start > last:
            why = f"its window {start}..{end} starts after the archive's last photo ({last})"
        elif end < first:
            why = f"its window {start}..{end} ends before the archive's first photo ({first})"
        else:
            why = f"the archive has no photo in its window {start}..{end}"
        _note(notes, "empty_stage", f"{folder}: stage {i} {name!r} of camera {camera} selects "
              f"0 photos: {why}", camera=camera, stage=i, count=0)


def _same_content(src, dst):
    # samefile covers an earlier hard or symbolic link to the same photo.
    try:
        if os.path.samefile(src, dst):
            return True
    except OSError:
        return False
    return filecmp.cmp(src, dst, shallow=False)


def _place(src, dst, link):
    """Copy or link ``src`` to ``dst`` without ever replacing an existing ``dst``."""
    if link == "sym":
        os.symlink(os.path.abspath(src), dst)
    elif link == "hard":
        try:
            os.link(src, dst)
        except OSError as exc:
            if exc.errno == errno.EXDEV:  # archive and output on different file systems
                raise OSError(f"cannot hard-link {src} to {dst}: different file systems; "
                              f"use --link sym or copy (no --link)") from exc
            raise
    else:
        # Copy under a temporary name, then link it in place: an interrupted run leaves
        # no half-written photo under a real name, and os.link refuses to overwrite.
        tmp = f"{dst}.part{os.getpid()}"
        with removed_on_error(tmp, dst):     # a full disk leaves no .part file
            shutil.copyfile(src, tmp)
        try:
            os.link(tmp, dst)
        finally:
            os.unlink(tmp)


def _read_manifest(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != MANIFEST_FIELDS:
            raise UserError(path, f"not a manifest written by select_img (header "
                                  f"{reader.fieldnames}, expected {MANIFEST_FIELDS})",
                            "move it away or choose another --out")
        return {row["file"]: row for row in reader}


def write_manifest(path, rows):
    """Merge ``rows`` into ``path`` (one row per file), so runs per camera add up."""
    path = Path(path)
    merged = _read_manifest(path) if path.exists() else {}
    merged.update({row["file"]: row for row in rows})
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(merged[k] for k in sorted(merged))
    return write_atomic(path, write)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Step 2: copy or link the stage images of each camera, preset and time "
                    "into one folder with encoded names, plus manifest.csv.")
    parser.add_argument("--archive", required=True,
                        help="archive root <root>/<camera>/<preset>_<YYYY-MM-DD>_<HH>.jpg "
                             "(original: /mnt/hdd/cherry2021)")
    parser.add_argument("--phenology", default=str(DEFAULT_PHENOLOGY_FILE),
                        help="phenology TOML file (default: data_processing/phenology.example.toml, "
                             "the original's values)")
    parser.add_argument("--cameras", nargs="+", default=None,
                        help="camera ids (default: all in the phenology file; original: E88570046)")
    parser.add_argument("--presets", nargs="+", type=int, default=list(DEFAULT_PRESETS),
                        help="preset points (original: 1 2 3 4 5)")
    parser.add_argument("--times", nargs="+", default=list(DEFAULT_TIMES),
                        help="times of day (original: 09 12 15)")
    parser.add_argument("--out-dir", "--out", dest="out", default="out", type=writable_dir,
                        help="output folder (default: out; the original wrote to a fixed folder)")
    parser.add_argument("--link", nargs="?", const="hard", choices=["hard", "sym"], default=None,
                        help="link instead of copying: --link or --link hard for hard links, "
                             "--link sym for symbolic links (original: copy)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="keep an existing output file whose content differs, instead of "
                             "stopping with an error")
    parser.add_argument("--allow-empty", action="store_true",
                        help="go on when a camera selects no photo (default: an error naming "
                             "the camera and the reason)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="parallel copies (original: a process pool of all cores)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (nothing here is random; kept for uniformity)")
    return parser.parse_args(argv)


def _target(out, src, name):
    # A .png archive gives .png stage images: the bytes are copied, not re-encoded.
    return out / name.filename(Path(src).suffix.lower())


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    random.seed(args.seed)
    phenology = load_phenology(args.phenology)
    times = [_time_slot(t) for t in args.times]
    for p in args.presets:
        if p < 0:
            raise UserError("--presets", f"{p} is not a preset number")
    notes = []
    jobs = plan_selection(phenology, args.archive, args.cameras, args.presets, times, notes)
    cameras = list(args.cameras or phenology.cameras)
    selected = {name.camera for _, name in jobs}
    empty = [cam for cam in cameras if cam not in selected]
    if empty and not args.allow_empty:
        reasons = [n["message"] for n in notes if n.get("camera") == empty[0]]
        raise UserError(Path(args.archive) / empty[0],
                        f"camera {empty[0]} selects no photo"
                        + (f" ({len(empty)} such cameras: {', '.join(empty)})" if len(empty) > 1 else "")
                        + (f" ({reasons[0].split(': ', 1)[1]})" if reasons else ""),
                        "check its folder, names and bud date, or pass --allow-empty")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Sort out existing files first, so a conflict stops the run before anything changes.
    todo, kept, conflicts = [], 0, []
    targets = {_target(out, src, name): src for src, name in jobs}
    for dst, src in targets.items():
        if dst.exists() or dst.is_symlink():
            if _same_content(src, dst):
                kept += 1
            else:
                conflicts.append(dst)
        else:
            todo.append((src, dst))
    if conflicts and not args.skip_existing:
        raise OutputExists(conflicts[0], f"exists with different content (from "
                                         f"{targets[conflicts[0]]}; {len(conflicts)} such "
                                         f"file(s)); nothing was changed",
                           "use another --out, remove them, or pass --skip-existing")

    with concurrent.futures.ThreadPoolExecutor(max(1, args.workers)) as pool:
        futures = [pool.submit(_place, src, str(dst), args.link) for src, dst in todo]
        for fut in tqdm(concurrent.futures.as_completed(futures), total=len(futures),
                        desc="select_img", unit="img", disable=not futures):
            fut.result()

    skipped = set(conflicts)
    rows = [dict(file=_target(out, src, name).name, camera=name.camera, preset=name.preset,
                 time=name.time, stage=name.stage, date=name.date)
            for src, name in jobs if _target(out, src, name) not in skipped]
    manifest = write_manifest(out / "manifest.csv", rows)
    counts = {cam: {i: 0 for i in range(len(phenology.stages))} for cam in cameras}
    for row in rows:
        counts[row["camera"]][row["stage"]] += 1
    write_json(out / REPORT_FILE, {"archive": str(args.archive),
                                            "phenology": str(args.phenology),
                                            "counts": counts, "warnings": notes})

    header = ["camera"] + [f"{i} {s.name}" for i, s in enumerate(phenology.stages)] + ["total"]
    table = [[cam] + list(c.values()) + [sum(c.values())] for cam, c in counts.items()]
    verb = {"hard": "hard-linked", "sym": "symlinked"}.get(args.link, "copied")
    print(f"{verb} {len(todo)} images to {out}, {kept} already there"
          + (f", {len(conflicts)} different existing files skipped" if conflicts else "")
          + f"; manifest {manifest}")
    print(format_table(header, table))
    if notes:
        print(f"{len(notes)} warning(s), listed in {out / REPORT_FILE}")
    return {"out_dir": str(out), "manifest": str(manifest), "counts": counts,
            "copied": len(todo), "kept": kept, "skipped": [str(c) for c in conflicts],
            "warnings": notes, "report": str(out / REPORT_FILE)}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
