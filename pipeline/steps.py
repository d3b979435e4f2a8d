"""The steps of ``run_pipeline.py`` as records (:data:`STEPS`), the run record, and the
data, pretraining and U-Net helpers ``paper_table.py`` and ``label_efficiency.py`` share.

A step's script is named by its module and imported when the step runs, so this
package never imports ``train.py``, ``predict.py`` or the other entry scripts.
"""
import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

try:
    import fcntl
except ImportError:            # Windows: the two rows' processes then write in turn unlocked
    fcntl = None

from pipeline.pretrainers import PRETRAINERS, PretrainInputs
from pipeline.profiles import parse_options
from utils.errors import MissingInput, UserError, note_run
from utils.run import check_run_kind, make_run_dir, write_json


class StepRecord:
    """The run folder and its record of finished steps (``steps.json``).

    Two processes may finish steps of one run (the random row trains beside the main
    one): each write re-reads the record under a lock and adds its own step.
    """

    def __init__(self, run_dir):
        self.dir = Path(run_dir)
        self.record_path = self.dir / "steps.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.exists() else {}

    def done(self, step):
        """Recorded as finished and its outputs still there."""
        return step in self.record and not missing_outputs(step, self.result(step))

    def finish(self, step, result, seconds):
        """Record ``step`` as done, once its outputs exist (else a UserError)."""
        missing = missing_outputs(step, result)
        if missing:
            raise UserError(f"step {step}", f"finished without its outputs ({', '.join(missing)})",
                            "check the step's messages above; it is not recorded as done")
        with self._locked():
            self.reload()
            self.record[step] = {"seconds": round(seconds, 1), "result": result}
            write_json(self.record_path, self.record)

    def reload(self):
        """Read the record again (another process may have finished steps)."""
        if self.record_path.exists():
            self.record = json.loads(self.record_path.read_text())

    @contextlib.contextmanager
    def _locked(self):
        with open(self.dir / ".steps.lock", "a") as handle:
            if fcntl:
                fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def result(self, step):
        return self.record.get(step, {}).get("result", {})


def missing_outputs(step, result):
    """Outputs of ``step`` that are not there (a None is a missing entry)."""
    return [str(p) for p in step_outputs(step, result) if p is None or not Path(p).exists()]


def step_outputs(step, result):
    """The files and folders a finished step must have left (from its recorded result)."""
    return STEPS[step].outputs(result or {}) if step in STEPS else []


def resumed_run(resume, kind):
    """The run folder ``resume`` to continue, made by the same ``kind`` of script."""
    run = StepRecord(resume)
    if not run.dir.is_dir():
        raise MissingInput(run.dir, "--resume: run folder not found",
                           "give the folder it printed as 'Run folder:'")
    check_run_kind(run.dir, kind)
    return run


def open_run(resume, name, args, logs_dir, kind):
    """The run folder ``resume`` to continue, or a new ``<logs_dir>/<name>_<time>`` of
    ``kind`` holding ``args.json``."""
    run = resumed_run(resume, kind) if resume else StepRecord(
        make_run_dir(name, args, root=logs_dir, kind=kind))
    note_run(run.dir, f"python {sys.argv[0]} --resume {run.dir}")
    print(f"Run folder: {run.dir}")
    return run


def plain(d):
    """Paths to strings, so step results fit in steps.json."""
    return json.loads(json.dumps(d, default=str))


def orchard_spec(profile_name, profile, seed, data_dir=None):
    """Where the synthetic orchard lives and the settings it is generated with."""
    return Path(data_dir or Path("demo_data") / profile_name), dict(profile.orchard, seed=seed)


def check_orchard_spec(profile_name, profile, seed, data_dir=None):
    """A data folder that holds an orchard made with other settings is refused."""
    data_dir, spec = orchard_spec(profile_name, profile, seed, data_dir)
    spec_path = data_dir / "orchard_spec.json"
    if spec_path.exists() and json.loads(spec_path.read_text()) != plain(spec):
        raise UserError(spec_path, f"{data_dir} holds an orchard generated with other settings",
                        "pass another --data-dir")


def make_data(profile_name, profile, seed, archive=None, phenology=None, voc=None,
              data_dir=None):
    """The user's data, or the profile's synthetic orchard (generated once in
    ``data_dir``, default ``demo_data/<profile>``, and reused while its spec matches).
    Returns ``{"archive", "phenology", "voc"}``, and for the orchard also its "presets"
    (steps 1 and 2 look at those, where a user's archive gets the original's 1-5)."""
    if archive:
        return {"archive": archive, "phenology": phenology, "voc": voc}
    from data_processing.synthetic_orchard import generate_orchard

    data_dir, spec = orchard_spec(profile_name, profile, seed, data_dir)
    spec_path = data_dir / "orchard_spec.json"
    if spec_path.exists():
        check_orchard_spec(profile_name, profile, seed, data_dir)
        print(f"  reusing the synthetic orchard in {data_dir}")
        return plain({"archive": str(data_dir / "archive"),
                      "phenology": str(data_dir / "phenology.toml"),
                      "voc": str(data_dir / "VOCdevkit"), "presets": spec["presets"]})
    made = generate_orchard(data_dir, contact_sheet=data_dir / "contact_sheet.png", **spec,
                            exists_fix="give another --data-dir, or empty that folder")
    write_json(spec_path, spec)
    return plain({**{k: made[k] for k in ("archive", "phenology", "voc")},
                  "presets": spec["presets"]})


def _data_inputs(data):
    """Steps 1 and 2's archive and priors, and the presets where the data names them."""
    found = {"archive": str(data["archive"]), "phenology": str(data["phenology"])}
    return {**found, "presets": [int(p) for p in data["presets"]]} if data.get("presets") else found


def select_options(user=""):
    return parse_options("--select-args", "data_processing.select_img", {"archive": "."}, user)


def pairs_options(profile, user=""):
    """Pairs split by date 0.8 / 0.1 / 0.1 unless the profile or the user says otherwise."""
    return parse_options("--pairs-args", "data_processing.make_dataset",
                         {"split": (0.8, 0.1, 0.1), "split_by": "date", **profile.pairs}, user)


def unet_options(profile, user=""):
    return parse_options("--unet-args", "train", profile.unet, user)


def select_images(run, seed, options=None):
    """Step 2: the stage images of the run's data into ``<run>/out``."""
    return plain((options or select_options()).run(
        **_data_inputs(run.result("orchard")), out=str(run.dir / "out"), seed=int(seed)))


def make_pairs(run, profile, seed, options=None):
    """Step 3: the pair index of the selected images."""
    pairs = run.dir / "pairs"
    return plain((options or pairs_options(profile)).run(
        path=str(run.result("select")["out_dir"]), x_out=str(pairs / "X.npy"),
        y_out=str(pairs / "Y.npy"), seed=int(seed)))


def pretrain_encoder(name, run, profile, seed, extra="", options=None):
    """Run pretrainer ``name`` of :data:`PRETRAINERS` on the run's selected images (and
    pair index), with ``options`` (its parsed options) or the profile's and ``extra``;
    returns ``{"run_dir", "encoder_path", "test_metrics"}``."""
    inputs = PretrainInputs(image_dir=run.result("select")["out_dir"],
                            pairs=run.result("pairs").get("splits"), logs_dir=run.dir, seed=seed,
                            voc=run.result("orchard").get("voc"))
    result = PRETRAINERS[name](inputs, profile, extra, options)
    return plain({"run_dir": result["run_dir"], "encoder_path": result["encoder_path"],
                  "test_metrics": result.get("test_metrics", {})})


def unet_inputs(voc, logs_dir, seed, freeze, total, encoder, frozen_only, frozen_run=None):
    """train.py's inputs (dest: value) for one of the two U-Nets of a row.

    The frozen-only run keeps a checkpoint at the end of its frozen phase; the fine-tuned
    run starts from it (``init_model``) instead of repeating that phase, which is the
    same training with the same seeds. Without such a checkpoint (an early stop, or a
    ``--save-period`` override) it trains both phases itself. Nothing resumes a finished
    U-Net of the pipeline, so its last checkpoint leaves out Adam's moments (two thirds
    of the file, and seconds of writing).
    """
    # The epNNN-*.keras the frozen-only run saved at the end of its frozen phase.
    start = next(iter(sorted(Path(frozen_run).glob(f"ep{int(freeze):03d}-*.keras"))), None) \
        if frozen_run and not frozen_only else None
    inputs = dict(voc_path=str(voc), logs_dir=str(logs_dir), seed=int(seed),
                  freeze_epoch=int(freeze), unfreeze_epoch=int(total),
                  save_period=int(freeze) if frozen_only else 0, final_optimizer_state=False,
                  frozen_only=bool(frozen_only))
    if start:
        return {**inputs, "init_model": str(start), "init_epoch": int(freeze)}
    return {**inputs, "model_path": str(encoder)} if encoder else inputs


def kept_unet(run):
    """The main row's U-Net the predictions and growth curves use: the fine-tuned one,
    or the frozen-only one when it has the higher best val_mIoU (or is the only one)."""
    best = None
    for step in ("unet_finetune", "unet_frozen"):
        result = run.result(step)
        if not result.get("model_path"):
            continue
        record = Path(result["run_dir"]) / "results.json"
        value = json.loads(record.read_text()).get("best_val_mIoU") if record.is_file() else None
        if best is None or (value is not None and (best[0] is None or value > best[0])):
            best = (value, result["model_path"])
    if best is None:
        raise UserError("--steps", "no U-Net step has finished in this run",
                        "run unet_frozen first")
    return best[1]


def pretrainer(args):
    """The :data:`PRETRAINERS` entry ``--init`` (with ``--method``) names, or None (a
    random encoder or a weights file)."""
    name = f"pde_{args.method}" if args.init == "pde" else args.init
    return name if name in PRETRAINERS else None


def _pretrain(args, run, profile, parsed):
    if args.init == "random":
        return {"encoder_path": None}
    name = pretrainer(args)
    if name is None:
        return {"encoder_path": args.init}         # a weights file
    return pretrain_encoder(name, run, profile, args.seed, options=parsed["pretrain"])


def _unet(frozen_only, row="unet"):
    """One U-Net of a row: ``row`` "unet" starts from the pretrain step's encoder,
    "random" from a random one; both rows use the same options and seeds."""
    def train_unet(args, run, profile, parsed):
        encoder = run.result("pretrain").get("encoder_path") if row == "unet" else None
        result = parsed["unet"].run(**unet_inputs(
            run.result("orchard")["voc"], run.dir, args.seed, *profile.epochs(frozen_only),
            encoder, frozen_only, frozen_run=run.result(f"{row}_frozen").get("run_dir")))
        return plain({"run_dir": result["run_dir"], "model_path": result["evaluated_model_path"],
                      "test_metrics": result["test_metrics"]})

    return train_unet


def _predict(args, run, profile, parsed):
    from utils.voc import image_path, read_split

    voc = run.result("orchard")["voc"]
    pick = run.dir / "predict_input"
    pick.mkdir(exist_ok=True)
    for image_id in read_split(voc, "test")[: profile.predict_images]:
        src = image_path(voc, image_id)
        dst = pick / src.name
        if not dst.exists():
            try:
                os.link(src, dst)          # no copy where the data and run share a disk
            except OSError:
                shutil.copyfile(src, dst)
    out = run.dir / "predictions"
    # The U-Net at the size of its parsed options (the profile's, or --unet-args).
    result = parsed["predict"].run(model_path=kept_unet(run), dir_origin_path=str(pick),
                                   dir_save_path=str(out),
                                   input_shape=list(parsed["unet"].args.input_shape))
    return plain(result or {"out_dir": out})


def _growth(args, run, profile, parsed):
    from data_processing.date_pro import archive_photos
    from data_processing.names import parse_archive_name

    data = run.result("orchard")
    camera = args.growth_camera or sorted(p.name for p in Path(data["archive"]).iterdir()
                                          if p.is_dir())[-1]
    photos = archive_photos(Path(data["archive"]) / camera)[0]
    if not photos:
        raise UserError(Path(data["archive"]) / camera, "no archive photo for the growth curves",
                        "give another --growth-camera")
    name = parse_archive_name(next(iter(photos.values())))
    return plain(parsed["growth"].run(
        archive=str(data["archive"]), camera=camera, preset=int(name.preset),
        time=int(name.hour), model_path=kept_unet(run), phenology=str(data["phenology"]),
        logs_dir=str(run.dir), input_shape=list(parsed["unet"].args.input_shape)))


def _unet_outputs(result):
    # Its test record, not its checkpoint: the end of a run prunes all U-Net
    # checkpoints but one, and the finished steps stay finished.
    run_dir = result.get("run_dir")
    return [run_dir, str(Path(run_dir) / "results.json") if run_dir else None]


def _entries(*keys):
    """A step's outputs: these entries of its record (None: a missing output)."""
    return lambda result: [result.get(k) for k in keys]


def _entry(key):
    """A step's outputs: this entry of its record, where it has one."""
    return lambda result: [result[key]] if result.get(key) else []


@dataclass(frozen=True)
class Step:
    """One step of ``run_pipeline.py``."""
    name: str
    run: Callable               # (args, run, profile, parsed) -> its record (plain JSON)
    parse: Callable = None      # (args, profile) -> its script's StepOptions, before step 1
    requires: tuple = ()        # the earlier steps whose records it reads ("a|b": either)
    outputs: Callable = _entries()   # its record -> the paths it must have left
    reads: tuple = ()           # run_pipeline options it is the first to read (--resume)
    labelled: bool = False      # it reads the labelled set
    baseline: bool = False      # a step of the random row
    options: str = None         # the key of its StepOptions in ``parsed`` (default: name)


def _unet_step(name, frozen_only, row):
    return Step(name, _unet(frozen_only, row), lambda args, profile: unet_options(
        profile, args.unet_args), ("orchard", "pretrain") if row == "unet" else ("orchard",),
        _unet_outputs, ("unet_args",) if name == "unet_frozen" else (), labelled=True,
        baseline=row == "random", options="unet")


# The steps in their order. Later steps read what earlier ones recorded.
STEPS = {s.name: s for s in (
    Step("orchard", lambda args, run, profile, parsed: make_data(
        args.profile, profile, args.seed, args.archive, args.phenology, args.voc, args.data_dir),
        outputs=lambda r: _entries("archive", "phenology")(r) + _entry("voc")(r),
        reads=("profile", "seed", "archive", "phenology", "voc", "data_dir")),
    Step("priors", lambda args, run, profile, parsed: plain(
        parsed["priors"].run(**_data_inputs(run.result("orchard"))) or {}),
        parse=lambda args, profile: parse_options("priors", "data_processing.date_pro", {}),
        requires=("orchard",)),
    Step("select", lambda args, run, profile, parsed: select_images(
        run, args.seed, parsed["select"]),
        parse=lambda args, profile: select_options(args.select_args),
        requires=("orchard",), outputs=_entries("out_dir", "manifest"), reads=("select_args",)),
    Step("pairs", lambda args, run, profile, parsed: make_pairs(
        run, profile, args.seed, parsed["pairs"]),
        parse=lambda args, profile: pairs_options(profile, args.pairs_args),
        requires=("select",), reads=("pairs_args",),
        outputs=lambda r: _entries("x", "y")(r) + [p for pair in r.get("splits", {}).values()
                                                   for p in pair]),
    Step("pretrain", _pretrain, parse=lambda args, profile: pretrainer(args) and PRETRAINERS[
        pretrainer(args)].parse(profile, args.pretrain_args),
        requires=("select", "pairs"), outputs=_entry("encoder_path"),
        reads=("precision", "method", "init", "pretrain_args")),
    _unet_step("unet_frozen", True, "unet"),
    _unet_step("unet_finetune", False, "unet"),
    _unet_step("random_frozen", True, "random"),
    _unet_step("random_finetune", False, "random"),
    Step("predict", _predict, parse=lambda args, profile: parse_options(
        "predict", "predict", {"mode": "dir_predict", "model_path": "."}),
        requires=("orchard", "unet_frozen|unet_finetune"), outputs=_entry("out_dir"),
        labelled=True),
    Step("growth", _growth, parse=lambda args, profile: parse_options(
        "--growth-args", "growth_modeling.unet_gm",
        {"archive": ".", "camera": ".", **profile.growth}, args.growth_args),
        requires=("orchard", "unet_frozen|unet_finetune"), outputs=_entry("run_dir"),
        reads=("growth_camera", "growth_args")),
)}
UNET_STEPS = tuple(s.name for s in STEPS.values() if s.options == "unet")


def mean_std(values):
    """Mean and population std over seeds, ``None`` values left out: floats for scalars,
    lists for per-class lists; ``(None, None)`` when nothing is left."""
    import numpy as np

    values = np.asarray([v for v in values if v is not None], float)
    if values.size == 0:
        return None, None
    return values.mean(axis=0).tolist(), values.std(axis=0).tolist()


def pm(stat, digits=4):
    """``(mean, std)`` as ``mean ± std``; a dash for ``(None, None)``."""
    mean, std = stat
    return "—" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def gap_verdict(what, first, second, names=("PDE", "random")):
    """Whether ``first``'s mean is above ``second``'s by more than twice the larger std
    (both lists by seed, paired), as one sentence with the paired gaps."""
    (m1, s1), (m2, s2) = mean_std(first), mean_std(second)
    gaps = [a - b for a, b in zip(first, second)]
    gap, bar = m1 - m2, 2 * max(s1, s2)
    if len(gaps) < 2:       # no spread to compare with: a gap of one seed is no verdict
        return (f"{what} gap {names[0]} - {names[1]}: {gap:+.4f} on one seed: no verdict "
                f"(give two seeds or more).")
    verdict = "above" if gap > bar else "NOT above"
    return (f"{what} gap {names[0]} - {names[1]}: {gap:+.4f}; twice the larger std: "
            f"{bar:.4f}: the gap is {verdict} it. Paired by seed: {pm(mean_std(gaps))}, "
            f"{names[0]} above on {sum(g > 0 for g in gaps)} of {len(gaps)} seeds.")
