"""The run record and the steps both ``run_pipeline.py`` and ``paper_table.py`` run:
the data (orchard, select, pairs), the pretraining, and the U-Net options."""
import contextlib
import json
import shlex
import sys
from pathlib import Path

try:
    import fcntl
except ImportError:            # Windows: the two rows' processes then write in turn unlocked
    fcntl = None

from pipeline.pretrainers import PRETRAINERS, PretrainInputs
from pipeline.profiles import to_argv
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


# The U-Net steps of run_pipeline.py (their records hold run_dir and model_path).
UNET_STEPS = ("unet_frozen", "unet_finetune", "random_frozen", "random_finetune")


def step_outputs(step, result):
    """The files and folders a finished step must have left (from its recorded result)."""
    result = result or {}
    if step == "orchard":
        paths = [result.get("archive"), result.get("phenology")]
        if result.get("voc"):
            paths.append(result["voc"])
        return paths
    if step == "select":
        return [result.get("out_dir"), result.get("manifest")]
    if step == "pairs":
        return [result.get("x"), result.get("y")] + [
            p for pair in result.get("splits", {}).values() for p in pair]
    if step == "pretrain":
        return [result["encoder_path"]] if result.get("encoder_path") else []
    if step in UNET_STEPS:
        # Its test record, not its checkpoint: the end of a run prunes all U-Net
        # checkpoints but one, and the finished steps stay finished.
        run_dir = result.get("run_dir")
        return [run_dir, str(Path(run_dir) / "results.json") if run_dir else None]
    if step in ("predict", "growth"):
        key = "out_dir" if step == "predict" else "run_dir"
        return [result.get(key)] if result.get(key) else []
    return []


def missing_outputs(step, result):
    """Outputs of ``step`` that are not there (a None is a missing entry)."""
    return [str(p) for p in step_outputs(step, result) if p is None or not Path(p).exists()]


def open_run(resume, name, args, logs_dir, kind):
    """The run folder ``resume`` to continue (made by the same ``kind`` of script), or a
    new ``<logs_dir>/<name>_<time>`` of ``kind`` holding ``args.json``."""
    if resume:
        run = StepRecord(resume)
        if not run.dir.is_dir():
            raise MissingInput(run.dir, "--resume: run folder not found",
                               "give the folder it printed as 'Run folder:'")
        check_run_kind(run.dir, kind)
    else:
        run = StepRecord(make_run_dir(name, args, root=logs_dir, kind=kind))
    note_run(run.dir, f"python {sys.argv[0]} --resume {run.dir}")
    print(f"Run folder: {run.dir}")
    return run


def join_argv(*parts):
    """One argv from lists of values and from users' option strings (shell-split)."""
    out = []
    for part in parts:
        out += shlex.split(part) if isinstance(part, str) else [str(x) for x in part]
    return out


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


def preset_args(data):
    """``--presets ...`` for steps 1 and 2 when the data says which presets it has."""
    return ["--presets", *data["presets"]] if data.get("presets") else []


def select_images(run, seed, extra=()):
    """Step 2: the stage images of the run's data into ``<run>/out``."""
    from data_processing import select_img

    data = run.result("orchard")
    return plain(select_img.main(join_argv(["--archive", data["archive"], "--phenology",
                                            data["phenology"], "--out", run.dir / "out",
                                            "--seed", seed], preset_args(data), extra)))


def make_pairs(run, profile, seed, extra=()):
    """Step 3: the pair index of the selected images, split by date 0.8 / 0.1 / 0.1."""
    from data_processing import make_dataset

    out = run.result("select")["out_dir"]
    pairs = run.dir / "pairs"
    return plain(make_dataset.main(join_argv(["--image-dir", out, "--out-x", pairs / "X.npy",
                                              "--out-y", pairs / "Y.npy",
                                              "--split", "0.8", "0.1", "0.1",
                                              "--split-by", "date", "--seed", seed],
                                             to_argv(profile.pairs), extra)))


def pretrain_encoder(name, run, profile, seed, extra=()):
    """Run pretrainer ``name`` of :data:`PRETRAINERS` on the run's selected images (and
    pair index); returns ``{"run_dir", "encoder_path", "test_metrics"}``."""
    inputs = PretrainInputs(image_dir=run.result("select")["out_dir"],
                            pairs=run.result("pairs").get("splits"), logs_dir=run.dir, seed=seed,
                            voc=run.result("orchard").get("voc"))
    result = PRETRAINERS[name](inputs, profile, join_argv(extra))
    return plain({"run_dir": result["run_dir"], "encoder_path": result["encoder_path"],
                  "test_metrics": result.get("test_metrics", {})})


def frozen_phase_checkpoint(run_dir, freeze):
    """The ``epNNN-*.keras`` a frozen-only run saved at the end of its frozen phase
    (epoch ``freeze``), or None."""
    if not run_dir:
        return None
    found = sorted(Path(run_dir).glob(f"ep{int(freeze):03d}-*.keras"))
    return found[0] if found else None


def unet_argv(voc, logs_dir, seed, freeze, total, encoder, frozen_only, extra,
              frozen_run=None):
    """train.py options for one of the two U-Nets of a row.

    The frozen-only run keeps a checkpoint at the end of its frozen phase; the fine-tuned
    run starts from it (``--init-model``) instead of repeating that phase, which is the
    same training with the same seeds. Without such a checkpoint (an early stop, or a
    ``--save-period`` override) it trains both phases itself. Nothing resumes a finished
    U-Net of the pipeline, so its last checkpoint leaves out Adam's moments (two thirds
    of the file, and seconds of writing).
    """
    start = frozen_phase_checkpoint(frozen_run, freeze) if not frozen_only else None
    return join_argv(["--voc-path", voc, "--logs-dir", logs_dir, "--seed", seed,
                      "--freeze-epoch", freeze, "--unfreeze-epoch", total,
                      "--save-period", freeze if frozen_only else 0,
                      "--no-final-optimizer-state"],
                     ["--frozen-only"] if frozen_only else [],
                     ["--init-model", start, "--init-epoch", freeze] if start
                     else (["--model-path", encoder] if encoder else []),
                     extra)


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
