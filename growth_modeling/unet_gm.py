"""Growth modeling: class proportions of one camera view over a season.

Runs a trained U-Net over the daily photos of one view (camera + preset) at one time of
day, optionally keeps only the plant (a plant-mask photo thresholded with Otsu), counts
each class's pixel share per day, smooths the curves with a 1-D Kalman smoother, plots
them against the date (with the phenology priors' stage windows shaded) and estimates
stage dates from the curves.

    python growth_modeling/unet_gm.py --archive ARCHIVE --camera E88570046 --preset 1 \\
        --time 12 --model-path logs/.../last_epoch.keras --phenology phenology.toml
"""
import argparse
import random
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import numpy as np  # noqa: E402

from growth_modeling import growth  # noqa: E402
from growth_modeling.smoothing import OBSERVATION_COVARIANCE, TRANSITION_COVARIANCE  # noqa: E402
from utils.errors import MissingInput, OutputExists, UserError, writable_dir  # noqa: E402
from utils.image_check import bad_images_error, find_bad_images  # noqa: E402
from utils.model_card import DEFAULTS, add_card_options, class_names  # noqa: E402
from utils.options import add_logs_dir, add_seed  # noqa: E402
from utils.run import make_run_dir, write_json  # noqa: E402

OUTPUTS = ("args.json", "shares.csv", "shares_smoothed.csv", "red_fruit.csv", "growth_raw.png",
           "growth_smoothed.png", "growth_smoothed_zoom.png", "growth_stages.png",
           "stage_dates.json", "stage_dates.csv", "overlays")


def unet_segmenter(model_path=None, num_classes=None, backbone=None, input_shape=None,
                   batch_size=8, model=None):
    """The real ``segment`` callable: the ``Unet`` predictor (``utils.predictor``), built once;
    options left None come from the model's card.

    Returns a function from a list of PIL images to a list of HxW uint8 class maps at
    the photos' own size; its ``name_classes`` are the model's classes.
    """
    from utils.predictor import Unet

    kwargs = dict(num_classes=num_classes, backbone=backbone,
                  input_shape=tuple(input_shape) if input_shape else None)
    if model is not None:
        kwargs["model"] = model
    else:
        kwargs["model_path"] = str(model_path)
    predictor = Unet(**kwargs)

    def segment(images):
        return predictor.predict_masks(images, batch_size=batch_size)

    segment.name_classes = predictor.name_classes
    return segment


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", required=True,
                   help="camera archive root holding <camera>/<preset>_<YYYY-MM-DD>_<HH>.jpg")
    p.add_argument("--camera", required=True,
                   help="camera id, the archive sub-folder (original: E88569964, hard-coded)")
    p.add_argument("--preset", type=int, default=1,
                   help="camera preset (pan/tilt/zoom position) (default 1; original: 6, hard-coded)")
    p.add_argument("--time", type=int, default=12, help="hour of the daily photo (default 12; original: 12)")
    p.add_argument("--model-path", help="trained U-Net (.keras or .h5); required unless the "
                                        "caller passes a segment function")
    add_card_options(p)
    p.add_argument("--batch-size", type=int, default=8,
                   help="photos per prediction batch (default 8; original: 1)")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--plant-mask", help="one plant-mask photo for every day (Otsu threshold, "
                                          "7x7 close then open); same size as the photos")
    mask.add_argument("--mask-time", type=int,
                      help="per-day plant masks: the same view's photo at this hour of the same "
                           "date (original: the 21 o'clock photos)")
    p.add_argument("--phenology", help="phenology priors TOML (data_processing/date_pro.py): "
                                       "stage windows shaded on the plot and compared with the "
                                       "estimated stage dates")
    p.add_argument("--transition-covariance", type=float, default=TRANSITION_COVARIANCE,
                   help="Kalman smoother day-to-day variance (original: 0.1)")
    p.add_argument("--observation-covariance", type=float, default=OBSERVATION_COVARIANCE,
                   help="Kalman smoother observation variance (original: 1)")
    p.add_argument("--zoom-ylim", type=float, default=0.25,
                   help="upper y limit of the zoomed smoothed plot (original: 0.25)")
    p.add_argument("--no-overlays", action="store_true",
                   help="do not save the blended class pictures (original: saved)")
    p.add_argument("--dpi", type=int, default=300, help="plot resolution (original: 300)")
    p.add_argument("--out-dir", type=writable_dir,
                   help="write here instead of a new run folder under --logs-dir "
                        "(existing files are never overwritten)")
    add_logs_dir(p)
    add_seed(p, help="random seed (default 11; nothing here is random, it is recorded)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _prepare_out_dir(args):
    if args.out_dir is None:
        return make_run_dir("growth", args, root=args.logs_dir)
    run_dir = Path(args.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clash = [str(run_dir / n) for n in OUTPUTS if (run_dir / n).exists()]
    if clash:
        raise OutputExists(run_dir, f"already holds {', '.join(clash)}; not overwriting",
                           "choose another --out-dir")
    write_json(run_dir / "args.json", vars(args))
    return run_dir


def main(argv=None, segment=None):
    return run(parse_args(argv), segment)


def run(args, segment=None):
    """Run growth modeling; ``segment`` (PIL images -> class maps) replaces the U-Net.

    Returns ``{"run_dir", "shares_csv", "smoothed_csv", "plots", "stage_dates",
    "stage_dates_csv", "events", "days"}``.
    """
    images = growth.find_daily_images(args.archive, args.camera, args.preset, args.time)
    plant_masks = None
    if args.plant_mask:
        if not Path(args.plant_mask).is_file():
            raise MissingInput(args.plant_mask, "plant mask image not found", "check --plant-mask")
        plant_masks = args.plant_mask
    elif args.mask_time is not None:
        plant_masks = growth.find_daily_images(args.archive, args.camera, args.preset,
                                               args.mask_time)
        missing = [d for d in images if d not in plant_masks]
        if missing:
            raise MissingInput(
                Path(args.archive) / args.camera, f"no {args.mask_time:02d} o'clock mask photo "
                f"for {len(missing)} day(s), first {missing[0]}", "check --mask-time")
    phenology = None
    if args.phenology:
        from data_processing.date_pro import load_phenology

        phenology = load_phenology(args.phenology)
    windows = (growth.stage_windows(phenology, args.camera, args.archive, args.preset, args.time)
               if phenology else [])

    photos = list(images.values()) + (list(plant_masks.values())
                                      if isinstance(plant_masks, dict) else [])
    bad = find_bad_images(photos + ([args.plant_mask] if args.plant_mask else []), "pil")
    if bad:
        raise bad_images_error(bad, "replace or delete it")
    if segment is None:
        if not args.model_path:
            raise UserError("--model-path", "is required (the trained U-Net)",
                            "give best_epoch.keras of a train.py run")
        from utils.utils import set_seed
        from utils.weights import check_weights_file

        check_weights_file(args.model_path, "--model-path")

        set_seed(args.seed)
        segment = unet_segmenter(args.model_path, args.num_classes, args.backbone,
                                 args.input_shape, args.batch_size)
    else:
        random.seed(args.seed)
        np.random.seed(args.seed)
    names = getattr(segment, "name_classes", None) or \
        class_names(args.num_classes or DEFAULTS["num_classes"])
    num_classes = len(names)

    run_dir = _prepare_out_dir(args)
    view = f"{args.camera}p{args.preset} at {args.time:02d}:00"
    dates, shares, red = growth.growth_curves(
        images, segment, num_classes, plant_masks, args.batch_size,
        fruit_class=growth.class_index(names, "fruit") if "fruit" in names else -1,
        overlay_dir=None if args.no_overlays else run_dir / "overlays", progress=not args.quiet)

    shares_csv = growth.write_shares_csv(run_dir / "shares.csv", dates, shares, names)
    growth.write_rows_csv(run_dir / "red_fruit.csv",
                          [{"date": d, "red_fruit_fraction": "" if np.isnan(r) else f"{r:.6f}"}
                           for d, r in zip(dates, red)])
    adjusted = growth.adjust_first_day(shares, names)
    grid, smoothed = growth.smooth_curves(dates, adjusted, args.transition_covariance,
                                          args.observation_covariance)
    # The background is not a growth curve: the original neither smoothed nor plotted it.
    smoothed[:, 0] = np.nan
    smoothed_csv = growth.write_shares_csv(run_dir / "shares_smoothed.csv", grid,
                                           smoothed[:, 1:], names[1:])
    events = growth.estimate_stage_dates(dates, shares, names, red,
                                         args.transition_covariance, args.observation_covariance)
    rows = growth.compare_with_priors(events, windows)
    stage_json = run_dir / "stage_dates.json"
    write_json(stage_json, {
        "view": view, "camera": args.camera, "preset": args.preset, "time": f"{args.time:02d}",
        "phenology": args.phenology, "estimated": events, "prior_windows": windows,
        "comparison": rows,
        "method": "first-day-adjusted, Kalman-smoothed shares: onset = first day at half the "
                  "peak, end = last day at half the peak, harvest = first day after the fruit "
                  "peak below half of it, ripening = first day half the fruit pixels are red"})
    stage_csv = growth.write_rows_csv(run_dir / "stage_dates.csv", rows)

    plots = [
        growth.plot_growth(run_dir / "growth_raw.png", dates, shares, names,
                           f"{view}: raw class proportions", dpi=args.dpi),
        growth.plot_growth(run_dir / "growth_smoothed.png", grid, smoothed, names,
                           f"{view}: smoothed, first day's fruit/leaf/flower subtracted",
                           dpi=args.dpi),
        growth.plot_growth(run_dir / "growth_smoothed_zoom.png", grid, smoothed, names,
                           f"{view}: smoothed (zoom)", ylim=(0, args.zoom_ylim), dpi=args.dpi),
        growth.plot_growth(run_dir / "growth_stages.png", grid, smoothed, names,
                           f"{view}: smoothed curves, prior stage windows shaded, estimated dates",
                           windows=windows, events={k: v for k, v in events.items() if v},
                           points=(dates, adjusted), dpi=args.dpi),
    ]
    print(f"growth modeling: {len(dates)} days of {view} -> {run_dir}")
    return {"run_dir": str(run_dir), "shares_csv": str(shares_csv),
            "smoothed_csv": str(smoothed_csv), "plots": [str(p) for p in plots],
            "stage_dates": str(stage_json), "stage_dates_csv": str(stage_csv),
            "events": events, "days": len(dates)}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
