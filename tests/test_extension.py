"""The extension points (issue 26): `methods.register`, `models.register` and train.py's `--import`.

A registered method or model is used as a built-in one is: by name in `build`/`build_model`, with its
hyperparameters checked, and in the train runner as `--method`/`--model` with one flag per
hyperparameter. The in-process tests register into copies of the tables (monkeypatch), so the other
tests see only the built-in names.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import flags

from tfrobust import cli, config, methods, models
from tfrobust.errors import ConfigError
from tfrobust.settings import setting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "scripts")
NO_TF = os.path.join(SCRIPTS, "no_tf.py")
TRAIN = os.path.join(ROOT, "runners", "train.py")
EVALUATE = os.path.join(ROOT, "runners", "evaluate.py")
ATTACK = methods.AttackConfig(eps=0.1, step_size=0.04, steps=2)


@pytest.fixture
def tables(monkeypatch):
    """Registration into copies of the method registry and the architecture table."""
    monkeypatch.setattr(methods, "REGISTRY", dict(methods.REGISTRY))
    monkeypatch.setattr(models, "ARCHITECTURES", dict(models.ARCHITECTURES))


def _method(name: str = "clean_smooth"):
    @dataclasses.dataclass(frozen=True)
    class CleanSmooth(methods.Method):
        smoothing: float = setting(0.1, "Label smoothing.", low=0, high=1, high_open=True)
        term_names = ("ce",)

        def loss(self, ctx, x, y, x_adv):
            raise NotImplementedError  # not trained here

    CleanSmooth.name = name
    return CleanSmooth


def test_a_registered_method_is_built_and_checked_like_a_builtin(tables):
    cls = methods.register(_method())
    assert methods.get("clean_smooth") is cls and methods.hyperparameters("clean_smooth") == ("smoothing",)
    assert methods.build("clean_smooth", ATTACK, {"smoothing": 0.3}).smoothing == 0.3
    with pytest.raises(ConfigError, match=r"smoothing must be >= 0 and < 1, got 1"):
        methods.build("clean_smooth", ATTACK, {"smoothing": 1.0})
    with pytest.raises(ConfigError, match=r"no hyperparameter\(s\) \['beta'\]"):
        methods.build("clean_smooth", ATTACK, {"beta": 1.0})
    assert "clean_smooth" in config.TrainConfig.__dataclass_fields__["method"].metadata["choices"]()
    with pytest.raises(ConfigError, match="method clean_smooth: smoothing must be >= 0 and < 1"):
        config.validate(config.TrainConfig(method="clean_smooth", method_options={"smoothing": -1.0}))


def test_register_refuses_a_taken_name_and_what_is_not_a_method(tables):
    with pytest.raises(ConfigError, match=r"a method named 'trades' is already registered "
                                          r"\(tfrobust.methods.trades.Trades\); give CleanSmooth another name"):
        methods.register(_method("trades"))
    methods.register(_method("mine"))
    with pytest.raises(ConfigError, match="a method named 'mine' is already registered"):
        methods.register(_method("mine"))
    with pytest.raises(ConfigError, match="is not a subclass of tfrobust.methods.Method"):
        methods.register(object)

    class NotADataclass(methods.get("pgd_at")):
        name = "undecorated"
    with pytest.raises(ConfigError, match=r"must be decorated with @dataclasses.dataclass\(frozen=True\)"):
        methods.register(NotADataclass)

    @dataclasses.dataclass(frozen=True)
    class PlainField(methods.Method):
        weight: float = 1.0
        name = "plain"
        term_names = ()

        def loss(self, ctx, x, y, x_adv):
            raise NotImplementedError
    with pytest.raises(ConfigError, match=r"hyperparameter\(s\) \['weight'\] must be made with"):
        methods.register(PlainField)

    @dataclasses.dataclass(frozen=True)
    class NoLoss(methods.Method):
        name = "no_loss"
        term_names = ()
    with pytest.raises(ConfigError, match=r"does not implement \['loss'\]"):
        methods.register(NoLoss)
    bad_name = _method("not a name")
    with pytest.raises(ConfigError, match="name must be a name such as 'my_method'"):
        methods.register(bad_name)
    assert "plain" not in methods.REGISTRY and "no_loss" not in methods.REGISTRY


def test_a_registered_method_gets_its_flag_with_help_and_bounds(tables):
    methods.register(_method())
    fv = flags.FlagValues()
    cli.define_flags(config.TrainConfig, flag_values=fv)
    defined = cli.define_method_flags(methods.REGISTRY, flag_values=fv)
    assert "smoothing" in defined and fv["smoothing"].default is None  # unset: the method's default
    assert fv["smoothing"].help == "Label smoothing. Must be >= 0 and < 1. Unset: the method's default (0.1)."


def test_a_hyperparameter_that_cannot_be_a_flag_is_refused(tables):
    @dataclasses.dataclass(frozen=True)
    class Clash(methods.Method):
        eps: float = setting(0.1, "Shadows the runner's --eps.")
        name = "clash"
        term_names = ()

        def loss(self, ctx, x, y, x_adv):
            raise NotImplementedError
    methods.register(Clash)
    fv = flags.FlagValues()
    cli.define_flags(config.TrainConfig, flag_values=fv)
    with pytest.raises(ConfigError, match="method clash's hyperparameter 'eps' has the name of the runner's flag"):
        cli.define_method_flags(methods.REGISTRY, flag_values=fv)

    methods.REGISTRY.pop("clash")

    @dataclasses.dataclass(frozen=True)
    class IntBeta(methods.Method):
        beta: int = setting(1, "TRADES' beta is a float.")
        name = "int_beta"
        term_names = ()

        def loss(self, ctx, x, y, x_adv):
            raise NotImplementedError
    methods.register(IntBeta)
    with pytest.raises(ConfigError, match="both take --beta, as different types or choices"):
        cli.define_method_flags(methods.REGISTRY, flag_values=flags.FlagValues())


def test_a_registered_model_is_built_and_checked_like_a_builtin(tables):
    import keras

    calls = []

    @models.register("dense_net", min_input_size=4)
    def build_dense(input_shape, num_classes, *, mean=None, std=None):
        """One dense layer."""
        calls.append((input_shape, num_classes, mean, std))
        inputs = keras.Input(input_shape)
        return keras.Model(inputs, keras.layers.Dense(num_classes)(keras.layers.Flatten()(inputs)))

    assert "dense_net" in models.MODEL_NAMES and models.ARCHITECTURES["dense_net"].description == "One dense layer."
    model = models.build_model("dense_net", (8, 8, 1), 10, mean=(0.5,), std=(0.2,))
    assert model.output_shape == (None, 10) and calls == [((8, 8, 1), 10, (0.5,), (0.2,))]
    assert models.MIN_INPUT_SIZES["dense_net"] == 4
    with pytest.raises(models.ModelError, match="too small|at least"):
        models.check_model("dense_net", (3, 3, 1), 10)
    with pytest.raises(models.ModelError, match="num_classes must be an integer >= 2"):
        models.build_model("dense_net", (8, 8, 1), 1)
    with pytest.raises(models.ModelError, match=r"mean has 2 values but the input has 1 channel"):
        models.check_model("dense_net", (8, 8, 1), 10, mean=(0.5, 0.5), std=(1.0, 1.0))
    assert len(calls) == 1  # the checks run before the factory is called


def test_model_register_refuses_a_taken_name_and_a_wrong_factory(tables):
    with pytest.raises(ConfigError, match=r"a model named 'tiny_cnn' is already registered "
                                          r"\(tfrobust.models.tiny.build_tiny_cnn\)"):
        models.register("tiny_cnn")(lambda input_shape, num_classes, *, mean=None, std=None: None)
    models.register("mine")(lambda input_shape, num_classes, *, mean=None, std=None: None)
    with pytest.raises(ConfigError, match="a model named 'mine' is already registered"):
        models.register("mine")(lambda input_shape, num_classes, *, mean=None, std=None: None)
    with pytest.raises(ConfigError, match=r"must take \(input_shape, num_classes, \*, mean, std\)"):
        models.register("no_stats")(lambda input_shape, num_classes: None)
    with pytest.raises(ConfigError, match="min_input_size must be an integer >= 1"):
        models.register("zero", min_input_size=0)
    with pytest.raises(ConfigError, match="the name must be a name such as 'my_cnn'"):
        models.register("my-cnn")


def _run(program, argv, cwd, extra_path=SCRIPTS, no_tf=True):
    prefix = [NO_TF] if no_tf else []
    return subprocess.run([sys.executable, *prefix, program, *argv], capture_output=True, text=True, timeout=900,
                          cwd=str(cwd), env=dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, extra_path])))


@pytest.mark.parametrize("argv,message", [
    (["--import=no_such_module"], "--import=no_such_module: no module named 'no_such_module'"),
    (["--import=no_such_package.module"], "no module named 'no_such_package'"),
    (["--import=failing"], "--import=failing: importing it failed: RuntimeError: broken on import"),
    (["--import=duplicate"], "--import=duplicate: importing it failed: a method named 'trades' is already"),
    (["--import=../x"], "not a module path such as mypkg.mymodule"),
    (["--import=user_extension", "--method=pgd_at_smooth", "--smoothing=1.5"],
     "method pgd_at_smooth: smoothing must be >= 0 and < 1, got 1.5"),
    (["--import=user_extension", "--method=pgd_at", "--smoothing=0.2"], "method pgd_at does not take --smoothing"),
    (["--import=user_extension", "--model=bn_cnnn"], "--model=bn_cnnn"),
    (["--method=pgd_at_smooth"], "--method=pgd_at_smooth"),  # not imported: not a choice
], ids=["missing", "missing package", "failing", "duplicate", "path", "bad value", "foreign", "bad model",
        "not imported"])
def test_import_errors_are_one_line_and_exit_2_before_tensorflow(tmp_path, argv, message):
    (tmp_path / "failing.py").write_text("raise RuntimeError('broken on import')\n")
    (tmp_path / "duplicate.py").write_text("from tfrobust import methods\nmethods.register(methods.get('trades'))\n")
    proc = _run(TRAIN, argv, tmp_path)  # the current directory is searched for the module
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert message in lines[0], lines[0]
    assert sorted(os.listdir(tmp_path)) == ["duplicate.py", "failing.py"]  # nothing written


def test_an_imported_method_and_model_pass_the_checks_before_tensorflow(tmp_path):
    proc = _run(TRAIN, ["--import=user_extension", "--method=pgd_at_smooth", "--smoothing=0.2", "--model=bn_cnn",
                        f"--output_dir={tmp_path}/run"], tmp_path)
    assert proc.returncode not in (0, 2) and "imported before the flags were checked" in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_train_with_an_imported_method_and_model_then_evaluate(tmp_path):
    run = tmp_path / "run"
    proc = _run(TRAIN, ["--import=user_extension", "--method=pgd_at_smooth", "--smoothing=0.2", "--model=bn_cnn",
                        "--epochs=1", "--train_examples=512", "--validation_size=0", "--attack_steps=2",
                        "--eval_steps=2", "--eval_examples=100", "--verbose=0", f"--output_dir={run}"],
                tmp_path, no_tf=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    settings = json.loads((run / "config.json").read_text())
    assert (settings["method"], settings["model"], settings["method_options"]) == (
        "pgd_at_smooth", "bn_cnn", {"smoothing": 0.2})
    history = (run / "history.json").read_text()
    assert "smooth" in history and "adv_ce" in history  # the method's terms are logged as metrics
    proc = _run(EVALUATE, [f"--model={run}", "--suite=quick", "--examples=50", "--verbose=false"], tmp_path,
                no_tf=False)  # the SavedModel needs no user code
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((run / "evaluation" / "report.json").read_text())
    assert (report["n_examples"], report["eps_values"], report["norm"]) == (50, [0.1], "linf")  # the run's threat model
