"""Segment photos, folders and videos with a trained U-Net; measure its speed.

    python predict.py --model-path best_epoch.keras img/a.jpg img/b.jpg       # predict
    python predict.py --model-path best_epoch.keras --mode dir_predict --dir-origin-path img
    python predict.py --model-path best_epoch.keras --mode video --video-path clip.mp4
    python predict.py --model-path best_epoch.keras --mode fps --fps-image-path img/a.jpg

Outputs are the coloured class maps blended 70 % over the photos, as the original.
Nothing is overwritten: an existing output name gets a ``_1``, ``_2`` ... suffix.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

from utils.errors import MissingInput, UserError, writable_dir  # noqa: E402
from utils.model_card import add_card_options  # noqa: E402
from utils.image_check import bad_images_error, find_bad_images, rgb8  # noqa: E402
from utils.options import add_seed  # noqa: E402
from utils.run import fresh_path  # noqa: E402
from utils.utils import set_seed  # noqa: E402

MODES = ("predict", "dir_predict", "video", "fps")
# The image types the original's dir_predict picked up.
IMAGE_SUFFIXES = (".bmp", ".dib", ".png", ".jpg", ".jpeg", ".pbm", ".pgm", ".ppm", ".tif", ".tiff")


def open_image(path):
    """Open a photo as RGB; a clear error naming a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(path, "image not found", "check the path")
    try:
        with Image.open(path) as im:
            im.load()
            return rgb8(im).copy()
    except (OSError, ValueError) as exc:
        raise UserError(path, f"not a readable image ({exc})") from exc


def predict_images(unet, paths, save_dir, count=False, batch_size=8):
    """Overlay every image in ``paths``; save ``save_dir/<name>``; return saved paths and shares."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    saved, shares = [], {}
    paths = [Path(p) for p in paths]
    with tqdm(total=len(paths), desc="predict", unit="img", disable=len(paths) < 2) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [open_image(p) for p in chunk]
            for path, image, mask in zip(chunk, images, unet.predict_masks(images, batch_size)):
                out = fresh_path(save_dir / path.name)
                unet.overlay(image, mask).save(out)
                saved.append(str(out))
                if count:
                    print(path)
                    shares[str(path)] = unet.print_shares(mask)
                bar.update(1)
    return saved, shares


def interactive(unet, save_dir, count=False):
    """The original's prompt loop; an empty line, ``q`` or end of input stops it."""
    saved, shares = [], {}
    while True:
        try:
            name = input("Input image filename (empty to quit):").strip()
        except EOFError:
            break
        if name in ("", "q", "quit", "exit"):
            break
        try:
            s, c = predict_images(unet, [name], save_dir, count)
        except (FileNotFoundError, ValueError) as exc:
            print(f"Open Error! {exc} Try again!")
            continue
        print(f"saved {s[0]}")
        saved += s
        shares.update(c)
    return saved, shares


def _video_source(video_path):
    return int(video_path) if str(video_path).isdigit() else str(video_path)


def check_video(path):
    """A video file OpenCV opens and reads a first frame of, before the model is loaded."""
    import cv2

    if not Path(path).is_file():
        raise MissingInput(path, "video not found", "check --video-path")
    capture = cv2.VideoCapture(str(path))
    try:
        ok = capture.isOpened() and capture.read()[0]
    finally:
        capture.release()
    if not ok:
        raise UserError(path, "not a video OpenCV can read", "check --video-path")


def run_video(unet, video_path, video_save_path="", video_fps=25.0, max_frames=None):
    """Segment every frame of a video file or camera; optionally write the overlays."""
    import cv2

    source = _video_source(video_path)
    if isinstance(source, str) and not Path(source).is_file():
        raise MissingInput(source, "video not found", "check --video-path")
    capture = cv2.VideoCapture(source)
    ok, frame = capture.read() if capture.isOpened() else (False, None)
    if not ok:
        capture.release()
        raise UserError(str(video_path), "not a video OpenCV can open, or no camera at that "
                                         "index", "check --video-path")
    writer, out_path = None, None
    if video_save_path:
        out_path = fresh_path(video_save_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fourcc = cv2.VideoWriter_fourcc(*("XVID" if out_path.suffix.lower() == ".avi" else "mp4v"))
        size = (frame.shape[1], frame.shape[0])
        writer = cv2.VideoWriter(str(out_path), fourcc, float(video_fps), size)
        if not writer.isOpened():
            raise UserError(out_path, f"cannot write a video (codec for {out_path.suffix!r} "
                                      f"unavailable)", "give --video-save-path a .avi name")
    fps, frames = 0.0, 0
    bar = tqdm(desc="video", unit="frame")
    try:
        while ok and (max_frames is None or frames < max_frames):
            t0 = time.perf_counter()
            rgb = Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            out = cv2.cvtColor(np.asarray(unet.detect_image(rgb)), cv2.COLOR_RGB2BGR)
            # The original's running average of the instantaneous frame rate.
            fps = (fps + 1.0 / max(time.perf_counter() - t0, 1e-9)) / 2
            out = cv2.putText(out, f"fps= {fps:.2f}", (0, 40), cv2.FONT_HERSHEY_SIMPLEX, 1,
                              (0, 255, 0), 2)
            if writer is not None:
                writer.write(out)
            frames += 1
            bar.update(1)
            bar.set_postfix(fps=f"{fps:.2f}")
            ok, frame = capture.read()
    except KeyboardInterrupt:
        print("Stopped; finishing the saved video.")
    finally:
        bar.close()
        capture.release()
        if writer is not None:
            writer.release()
    print("Video Detection Done!")
    if out_path is not None:
        print(f"Save processed video to the path: {out_path}")
    return {"frames": frames, "fps": fps, "video_save_path": str(out_path) if out_path else None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("images", nargs="*", help="images for mode predict (none: ask in a loop, "
                                             "as the original)")
    p.add_argument("--mode", choices=MODES, default="predict", help="(original: predict)")
    p.add_argument("--model-path", required=True,
                   help="trained model: .keras from train.py, or a weights file")
    add_card_options(p)
    p.add_argument("--no-blend", action="store_true",
                   help="save the bare colour map instead of the overlay (original: blend on)")
    p.add_argument("--count", action="store_true", help="print each class's pixel share")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass "
                                                             "(default: 8; original: 1)")
    p.add_argument("--dir-origin-path", default="img", help="input folder of dir_predict "
                                                            "(original: img)")
    p.add_argument("--out-dir", "--dir-save-path", dest="dir_save_path", default="img_out",
                   type=writable_dir,
                   help="output folder of predict and dir_predict (original: img_out)")
    p.add_argument("--video-path", default="a001.mp4",
                   help="video file, or a camera index such as 0 (original: a001.mp4)")
    p.add_argument("--video-save-path", default="out001.mp4",
                   help="write the overlaid video here; \"\" = do not save (original: out001.mp4)")
    p.add_argument("--video-fps", type=float, default=25.0, help="fps of the saved video "
                                                                "(original: 25)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--test-interval", type=int, default=100,
                   help="predictions timed in mode fps (original: 100)")
    p.add_argument("--fps-image-path", default="img/street.jpg",
                   help="image timed in mode fps (original: img/street.jpg)")
    add_seed(p)
    return p.parse_args(argv)


def check_inputs(args):
    """Everything a mode reads, before the model is loaded: the model file, the images
    (each decoded once, cached), the input folder, the video file. Returns the image
    paths of modes predict and dir_predict."""
    from utils.weights import check_class_count, check_weights_file

    if args.images and args.mode != "predict":
        raise UserError("images", f"image arguments are only for --mode predict, not {args.mode}",
                        "drop them or use --mode predict")
    check_weights_file(args.model_path, "--model-path")
    if args.num_classes is not None:
        check_class_count(args.model_path, args.num_classes)
    paths = []
    if args.mode == "predict":
        paths = [Path(p) for p in args.images]
    elif args.mode == "dir_predict":
        folder = Path(args.dir_origin_path)
        if not folder.is_dir():
            raise MissingInput(folder, "input folder not found", "check --dir-origin-path")
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise UserError(folder, f"no images ({', '.join(IMAGE_SUFFIXES)})",
                            "check --dir-origin-path")
    elif args.mode == "fps":
        paths = [Path(args.fps_image_path)]
    elif args.mode == "video" and not str(args.video_path).isdigit():
        check_video(args.video_path)
    for p in paths:
        if not p.is_file():
            raise MissingInput(p, "image not found", "check the path")
    bad = find_bad_images(paths, "pil")
    if bad:
        raise bad_images_error(bad, "replace it or leave it out")
    return paths


def main(argv=None):
    return run(parse_args(argv))


def run(args):
    set_seed(args.seed)
    paths = check_inputs(args)
    from unet import Unet

    unet = Unet(model_path=args.model_path, num_classes=args.num_classes,
                backbone=args.backbone,
                input_shape=tuple(args.input_shape) if args.input_shape else None,
                blend=not args.no_blend)
    result = {"mode": args.mode}
    if args.mode == "predict":
        if args.images:
            saved, shares = predict_images(unet, paths, args.dir_save_path, args.count,
                                           args.batch_size)
        else:
            saved, shares = interactive(unet, args.dir_save_path, args.count)
        result.update(saved=saved, shares=shares)
    elif args.mode == "dir_predict":
        saved, shares = predict_images(unet, paths, args.dir_save_path, args.count,
                                       args.batch_size)
        result.update(saved=saved, shares=shares)
    elif args.mode == "video":
        result.update(run_video(unet, args.video_path, args.video_save_path, args.video_fps,
                                args.max_frames))
    else:
        tact_time = unet.get_FPS(open_image(args.fps_image_path), args.test_interval)
        print(f"{tact_time} seconds, {1 / tact_time} FPS, @batch_size 1")
        result.update(seconds_per_image=tact_time, fps=1 / tact_time)
    return result


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
