"""The shared pipeline module: one pretraining registry and typed profiles."""
import shlex

import pytest

from other_ssl.methods import METHODS
from pipeline.pretrainers import PRETRAINERS, PretrainInputs
from pipeline.profiles import PROFILES, to_argv


def test_registry_holds_pde_every_ssl_method_supervised_and_cscl():
    assert {"pde_class", "pde_grading", "supervised", "cscl", *METHODS} == set(PRETRAINERS)


def test_every_pretrainer_names_a_script_that_parses_and_runs():
    import importlib

    for name, pretrainer in PRETRAINERS.items():
        script = importlib.import_module(pretrainer.script)
        assert callable(script.parse_args) and callable(script.run), name


def test_to_argv_flags_tuples_and_left_out_values():
    argv = to_argv({"input_shape": (32, 64), "run_eagerly": True, "shared_towers": False,
                    "pool": "gap", "learning_rate": 1e-3, "model_path": None})
    assert argv == ["--input-shape", "32", "64", "--run-eagerly", "--pool", "gap",
                    "--learning-rate", "0.001"]


@pytest.mark.parametrize("name, field, old", [
    ("tiny", "pretrain", "--input-shape 64 64 --load-size 72 72 --batch-size 4 "
                         "--test-batch-size 4 --epochs 1 --steps-per-epoch 2 --run-eagerly "
                         "--precise-bn 1 --precision auto"),
    ("demo", "pretrain", "--input-shape 32 64 --load-size 32 64 --batch-size 32 "
                         "--test-batch-size 64 --epochs 3 --steps-per-epoch 100 --pool gap "
                         "--shared-towers --no-augment --learning-rate 1e-3 --precise-bn 20 "
                         "--validation-steps 5 --keep-checkpoints 1 "
                         "--resume-period-min 10 --freeze-stages conv1 res2 res3 "
                         "--precision float32"),
    ("demo", "unet", "--input-shape 128 224 --train-crop 64 128 --augment light "
                     "--freeze-batch-size 8 --unfreeze-batch-size 8 "
                     "--freeze-lr 1e-3 --warmup-steps 7 --precision auto --encoder-bn-batches 7 "
                     "--val-period 15 --resume-period-min 10"),
    ("demo", "images_pretrain", "--input-shape 32 64 --batch-size 32 --epochs 3 "
                                "--steps-per-epoch 100 --pool gap --learning-rate 1e-3 "
                                "--precise-bn 20 --precision auto"),
    ("tiny", "pairs", "--per-class 24 --drop-empty-classes"),
])
def test_profiles_become_the_scripts_option_strings(name, field, old):
    def parsed(tokens):
        # Numbers compare as numbers: 1e-3 and 0.001 are one value.
        return [float(t) if t.replace(".", "").replace("e-", "").isdigit() else t for t in tokens]

    assert parsed(to_argv(getattr(PROFILES[name], field))) == parsed(shlex.split(old))


@pytest.mark.parametrize("precision", ["auto", "float32", "bfloat16", "float16"])
def test_every_precision_reaches_every_training_step(precision):
    import run_pipeline
    import train
    from pde_self_supervised import con_train_resnet_class
    from pipeline.profiles import with_precision

    args = run_pipeline.parse_args(["--profile", "demo", "--precision", precision])
    profile = with_precision(PROFILES[args.profile], args.precision)
    assert train.parse_args(["--voc-path", "v"] + to_argv(profile.unet)).precision == precision
    pde = con_train_resnet_class.parse_args(to_argv(profile.pretrain))
    assert pde.precision == precision
    assert with_precision(PROFILES["demo"], None) is PROFILES["demo"]
    # --unet-args overrides the profile's, as the pipeline passes them last.
    unet_argv = ["--voc-path", "v"] + to_argv(PROFILES["demo"].unet) + ["--precision", precision]
    assert train.parse_args(unet_argv).precision == precision
    # --mixed-precision stays, as the same as --precision auto.
    assert train.parse_args(["--voc-path", "v", "--mixed-precision"]).precision == "auto"


def test_an_ssl_pretrainer_runs_its_method_with_the_profile_and_the_overrides(monkeypatch):
    from other_ssl import train_ssl

    seen = {}
    monkeypatch.setattr(train_ssl, "run", lambda args: seen.setdefault("args", args))
    inputs = PretrainInputs(image_dir="out", pairs=None, logs_dir="logs", seed=3)
    PRETRAINERS["simsiam"](inputs, PROFILES["tiny"], "--epochs 5")
    args = seen["args"]
    assert (args.method, args.image_dir, args.logs_dir, args.seed) == ("simsiam", "out", "logs", 3)
    assert args.epochs == 5 and args.pool == "gap" and args.input_shape == [64, 64]


def test_cscl_pretrainer_reads_the_voc_set_at_the_unet_size(monkeypatch):
    from other_ssl import train_cscl

    seen = {}
    monkeypatch.setattr(train_cscl, "run", lambda args: seen.setdefault("args", args))
    inputs = PretrainInputs(image_dir="out", pairs=None, logs_dir="logs", seed=3, voc="VOC")
    PRETRAINERS["cscl"](inputs, PROFILES["tiny"])
    args = seen["args"]
    assert (args.voc_path, args.logs_dir, args.seed) == ("VOC", "logs", 3)
    assert args.input_shape == [64, 64] and args.batch_size == 4
    assert not hasattr(args, "pool") and not hasattr(args, "image_dir")


def _validate(argv, steps, tmp_path):
    import run_pipeline

    args = run_pipeline.parse_args(["--profile", "tiny", "--data-dir", str(tmp_path / "data"),
                                    *argv])
    return run_pipeline.validate_inputs(args, PROFILES["tiny"], steps)


def test_pretrain_args_are_checked_against_the_pretrainers_own_script(tmp_path):
    """cscl's own --pos-weight passes validation (it was checked against train_ssl.py's
    parser); an option cscl does not know is refused in one line naming --pretrain-args."""
    from utils.errors import UserError

    parsed = _validate(["--init", "cscl", "--pretrain-args", "--pos-weight 0.2"],
                       ["pretrain"], tmp_path)
    assert parsed["pretrain"].script == "other_ssl.train_cscl"
    assert parsed["pretrain"].args.pos_weight == 0.2
    # train_ssl.py's --pool is not cscl's; --pos-weight is not simclr's.
    for init, option in (("cscl", "--pool gap"), ("simclr", "--pos-weight 0.2")):
        with pytest.raises(UserError) as refused:
            _validate(["--init", init, "--pretrain-args", option], ["pretrain"], tmp_path)
        message = str(refused.value)
        assert message.startswith("--pretrain-args: ") and "\n" not in message
        assert f"unrecognized arguments: {option}" in message


def test_step_options_are_parsed_once_and_the_users_win_over_the_runs_inputs(tmp_path):
    parsed = _validate(["--init", "random", "--unet-args", "--input-shape 32 48 --save-period 3",
                        "--growth-args=--no-overlays"],
                       ["orchard", "unet_frozen", "predict", "growth"], tmp_path)
    # predict and growth feed the U-Net the size of the parsed --unet-args.
    assert parsed["unet"].args.input_shape == [32, 48] and parsed["growth"].args.no_overlays
    from pipeline.steps import unet_inputs

    args = parsed["unet"].with_inputs(**unet_inputs("voc", "logs", 3, 1, 2, "enc.h5", True))
    assert (args.voc_path, args.model_path, args.freeze_epoch, args.frozen_only) == \
        ("voc", "enc.h5", 1, True)
    assert args.save_period == 3                # typed by the user: the pipeline's 1 gives way
    assert not args.final_optimizer_state and parsed["unet"].args.save_period == 3


def test_every_step_requires_only_earlier_steps():
    from pipeline.steps import STEPS

    names = list(STEPS)
    for i, step in enumerate(STEPS.values()):
        needs = [n for need in step.requires for n in need.split("|")]
        assert set(needs) <= set(names[:i]), step.name


def test_mean_std_over_seeds_for_scalars_and_per_class_lists():
    from pipeline.steps import mean_std

    assert mean_std([0.2, None, 0.4]) == pytest.approx((0.3, 0.1))
    mean, std = mean_std([[0.0, 1.0], [2.0, 1.0]])
    assert mean == [1.0, 1.0] and std == [1.0, 0.0]
    assert mean_std([None]) == (None, None)


def test_pde_vs_random_says_whether_the_gap_beats_twice_the_spread():
    from benchmarks.pde_vs_random import summarise

    def seed(pde, rnd):
        unet = lambda m: {"mIoU": m, "IoU": [m] * 5}  # noqa: E731
        return {"seconds": 60.0, "pair_accuracy": 0.6, "knn pde": 0.7, "knn random": 0.6,
                "pde frozen": unet(pde), "pde fine-tuned": unet(pde),
                "random frozen": unet(rnd), "random fine-tuned": unet(rnd)}

    clear = summarise({"1": seed(0.50, 0.30), "2": seed(0.52, 0.31), "3": seed(0.51, 0.29)})
    assert "0.5100 ± 0.0082" in clear and "the gap is above it" in clear
    noisy = summarise({"1": seed(0.50, 0.30), "2": seed(0.30, 0.45), "3": seed(0.40, 0.35)})
    assert "the gap is NOT above it" in noisy
    assert "colour classifier" not in noisy          # (seeds recorded before it was measured)
    assert "same stage or not" not in noisy          # (nor the pretext's two halves)
    halves = {k: dict(seed(0.5, 0.3), view_accuracy=v, stage_accuracy=st)
              for k, v, st in (("1", 0.9, 0.6), ("2", 1.0, 0.7))}
    assert "same view or not: 0.950 ± 0.050, same stage or not: 0.650 ± 0.050" in summarise(halves)
    # The colour classifier's row, and on how many seeds the frozen PDE U-Net beats it.
    runs = {"1": seed(0.50, 0.30), "2": seed(0.52, 0.31), "3": seed(0.51, 0.29)}
    for run, colour in zip(runs.values(), (0.505, 0.53, 0.40)):
        run["colour"] = {"mIoU": colour, "IoU": [colour] * 5}
    assert "above it on 1 of 3 seeds" in summarise(runs)
    # The per-pixel read-out's rows and verdict, with the gaps paired by seed.
    assert "Read-out mIoU" not in summarise(runs)
    for run, (pde, rnd) in zip(runs.values(), ((0.36, 0.33), (0.33, 0.30), (0.37, 0.33))):
        run["pde probe"], run["random probe"] = ({"mIoU": m, "IoU": [m] * 5} for m in (pde, rnd))
    text = summarise(runs)
    assert "| pde, all maps | 0.353" in text and "maps 0-2" not in text
    assert ("Read-out mIoU (all maps) gap PDE - random: +0.0333; twice the larger std: "
            "0.0340: the gap is NOT above it. Paired by seed: 0.0333 ± 0.0047, PDE above on 3 of 3 seeds.") in text
    for run in runs.values():
        run["pde probe shallow"] = run["random probe shallow"] = {"mIoU": 0.47, "IoU": [0.47] * 5}
    text = summarise(runs)
    assert "| random, maps 0-2 | 0.470 ± 0.000" in text
    assert "Read-out mIoU (maps 0-2) gap PDE - random: +0.0000" in text


def test_gap_verdict_needs_two_seeds_and_compares_with_twice_the_std():
    from pipeline.steps import gap_verdict

    assert "no verdict" in gap_verdict("mIoU", [0.6], [0.5])
    above = gap_verdict("mIoU", [0.60, 0.62, 0.61], [0.50, 0.51, 0.52])
    assert "the gap is above it" in above and "above on 3 of 3 seeds" in above
    spread = gap_verdict("mIoU", [0.60, 0.40], [0.50, 0.52])
    assert "NOT above" in spread
