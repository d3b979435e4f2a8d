"""One trainer frame: every trainer declares the shared options through utils/options.py
(one name, type and help each), and fits through fit_in_run (the log row is written
before the checkpoints, and the run's log comes back)."""
import argparse
import importlib

import numpy as np
import pytest

TRAINERS = {"train": True, "pde_self_supervised.con_train_resnet_class": True,
            "pde_self_supervised.con_train_resnet": True, "other_ssl.train_ssl": True,
            "other_ssl.train_supervised": True, "other_ssl.train_cscl": True,
            "few_shot.train_few_shot": False}   # module: has --precision/--strategy/--resume
SHARED = ("--input-shape", "--seed", "--logs-dir", "--run-eagerly")
COMPUTE = ("--precision", "--mixed-precision", "--strategy", "--resume")


def trainer_parser(module, monkeypatch):
    """The parser ``module.parse_args`` builds (caught as it parses no arguments)."""
    caught = []
    original = argparse.ArgumentParser.parse_args

    def catch(self, args=None, namespace=None):
        caught.append(self)
        return original(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    importlib.import_module(module).parse_args(["--from-scratch"] if module == "train" else [])
    return caught[0]


def _shape(action):
    """What must be the same in every script: how the option parses, and its help
    but for the parts that name the script's own default, input or checkpoint."""
    help_ = {"input_shape": "", "seed": action.help.split("(")[0],
             "resume": action.help.split(" from ")[0]}.get(action.dest, action.help)
    return (action.dest, action.nargs, action.type, action.metavar, type(action).__name__,
            action.const, tuple(action.choices or ()), help_)


@pytest.fixture(scope="module")
def parsers():
    with pytest.MonkeyPatch.context() as mp:
        return {m: {o: a for a in trainer_parser(m, mp)._actions for o in a.option_strings}
                for m in TRAINERS}


def test_every_trainer_has_the_shared_options_declared_once(parsers):
    for module, compute in TRAINERS.items():
        wanted = SHARED + (COMPUTE if compute else ())
        missing = [o for o in wanted if o not in parsers[module]]
        assert not missing, f"{module} lacks {missing}"
        if not compute:
            assert not set(COMPUTE) & set(parsers[module]), module
    for option in SHARED + COMPUTE:
        shapes = {m: _shape(p[option]) for m, p in parsers.items() if option in p}
        assert len(set(shapes.values())) == 1, f"{option} differs between trainers: {shapes}"


def test_resume_help_names_what_may_change():
    from pde_self_supervised import train_common
    from utils.options import add_run_options

    text = add_run_options(argparse.ArgumentParser(), may_change=("epochs", "save_period"),
                           compute=False).format_help()
    assert "--epochs, --save-period may be given again" in " ".join(text.split())
    helps = {a.dest: a.help for a in train_common.make_parser(
        importlib.import_module("pde_self_supervised.con_train_resnet_class").SPEC, "")._actions}
    assert all("--" + k.replace("_", "-") in helps["resume"]
               for k in train_common.RESUME_MAY_CHANGE)


def test_fit_in_run_writes_the_row_before_the_checkpoint_and_returns_the_log(tmp_path):
    import keras

    from utils.callbacks import fit_in_run
    from utils.run import Run, read_log

    run = Run(tmp_path)
    seen = []

    class AddsToLogs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["extra"] = 10.0 + epoch

    class After(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(read_log(tmp_path).get("epoch"))

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 1), "float32")
    history = fit_in_run(run, model, x, [AddsToLogs()], [After()],
                         record=None, y=y, batch_size=2, epochs=2)
    assert seen == [[0], [0, 1]]          # each epoch's row was there before "after" ran
    assert history["extra"] == [10.0, 11.0] and len(history["loss"]) == 2
    assert history == {k: v for k, v in read_log(tmp_path).items() if k != "epoch"}
    assert (tmp_path / "epoch_loss.png").is_file() and (tmp_path / "tensorboard").is_dir()


def test_epoch_log_writes_a_named_log(tmp_path):
    import keras

    from utils.callbacks import EpochLog, fit_in_run
    from utils.run import Run, read_log

    run = Run(tmp_path)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    history = fit_in_run(run, model, np.ones((2, 2), "float32"),
                         record=[EpochLog(run, "stage_training_log.csv")],
                         y=np.zeros((2, 1), "float32"), epochs=3)
    assert history == {} and not (tmp_path / "training_log.csv").exists()
    assert read_log(tmp_path / "stage_training_log.csv")["epoch"] == [0, 1, 2]
