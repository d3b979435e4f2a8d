"""Few-shot classification: transfer learning, then similarity learning, evaluated on
the held-out images (the protocol of A. Uzhinskiy, Biology 14 (2025) 99).

    python few_shot/train_few_shot.py --image-dir my_classes/ --shots 10 --loss arcface
    python few_shot/train_few_shot.py --image-dir out/ --stages-from-names \\
        --backbone encoder-resnet50 --weights logs/pde_class_<time>/encoder.weights.h5

Stage 1 (transfer learning): the backbone frozen, GAP -> Dense-ReLU -> Dense(classes),
cross-entropy, Adam 1e-4, 50 epochs, batch 64. Stage 2 (similarity learning), as the
study: the backbone is retrained (``--freeze-backbone`` keeps it frozen) with GAP ->
Dense(embedding), L2-normalised, under ``--loss`` on P x K batches with online mining;
then a classification part on the embeddings, Dense-ReLU-Dropout(0.2)-Dense(classes),
cross-entropy, Adam 1e-4, 30 epochs, batch 64, gives the stage's predictions (the
cosine head's or nearest centroid's are reported beside them). Each stage is evaluated
on the images not among the K shots of each class.

Writes a new run folder ``<logs>/few_shot_<time>/``: ``args.json``, per stage
(``transfer``, and ``similarity_<loss>`` for each ``--loss``) ``<stage>_training_log.csv``, ``<stage>_report.csv`` (per class), ``<stage>_confusion.png``,
``<stage>_pca.png`` and ``<stage>_tsne.png`` (held-out embeddings), for stage 2 also
``<stage>_classifier_log.csv``, and ``results.json``.
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.tf_env import configure_tensorflow  # noqa: E402

configure_tensorflow()  # before TensorFlow loads: quiet logs, oneDNN on every x86-64 CPU

import argparse  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from few_shot.backbones import CLASSIFIER_BACKBONES, build_backbone, check_backbone  # noqa: E402
from few_shot.data import (NORMALIZATIONS, FewShotDataError, PKSampler,  # noqa: E402
                           encoder_scale_stats, load_images, normalization_stats,
                           read_class_folders, read_stage_images, split_shots)
from few_shot.evaluate import (classification_metrics, nearest_centroid_predict,  # noqa: E402
                               plot_confusion, plot_embeddings, write_report_csv)
from few_shot.losses import METRIC_LOSSES, STUDY_DEFAULTS  # noqa: E402
from utils.callbacks import EpochLog, EpochTimer, StopOnNonFinite, fit_in_run  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.optimizers import FusedAdam  # noqa: E402
from utils.options import add_input_shape, add_run_options  # noqa: E402
from utils.run import Run, make_run_dir  # noqa: E402
from utils.utils import set_seed  # noqa: E402

STAGES = ("transfer", "similarity")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--image-dir", default="out",
                      help="one subfolder per class, or with --stages-from-names step 2's "
                           "stage images (default out/)")
    data.add_argument("--stages-from-names", action="store_true",
                      help="classes are the stages in step 2's file names "
                           "<camera>p<preset>t<HH>i<stage>d<date>_<HH>.jpg")
    data.add_argument("--shots", type=int, default=10,
                      help="K training images per class (stratified, seeded); the rest are "
                           "held out for evaluation (default 10)")
    add_input_shape(data, [256, 256], "images are resized to H W (the study: 256 256)")
    data.add_argument("--normalize", choices=NORMALIZATIONS, default="imagenet",
                      help="pixel normalisation: ImageNet's mean and std, the study's data "
                           "set's fixed constants (doctorp), statistics computed from the "
                           "K-shot training images (computed), none (0..1), or encoder: the "
                           "scale the --model-path file's model card names, as ImageNet's "
                           "for an ImageNet backbone (default imagenet)")
    model = p.add_argument_group("model")
    model.add_argument("--backbone", choices=list(CLASSIFIER_BACKBONES),
                       default="mobilenetv2",
                       help="keras.applications model, or encoder-resnet50 / encoder-vgg for "
                            "this project's encoder files (default mobilenetv2)")
    model.add_argument("--model-path", "--weights", dest="weights", default="imagenet",
                       help="backbone weights: imagenet (Keras's cache; downloaded when "
                            "online), none, or a weights file loaded by layer name (default "
                            "imagenet; --weights is the same option)")
    model.add_argument("--hidden", type=int, default=256,
                       help="units of the Dense-ReLU layer of stage 1's head and of stage "
                            "2's classification part (default 256)")
    model.add_argument("--embedding-dim", type=int, default=128,
                       help="size of stage 2's L2-normalised embedding (default 128)")
    model.add_argument("--freeze-backbone", action="store_true",
                       help="stage 2 keeps the backbone frozen, as stage 1 (its features "
                            "are computed once); default: retrained with the metric loss, "
                            "as the study")
    train = p.add_argument_group("training")
    train.add_argument("--stages", choices=STAGES, nargs="+", default=list(STAGES),
                       help="which stages to run (default both)")
    train.add_argument("--loss", choices=list(METRIC_LOSSES), nargs="+", default=["arcface"],
                       help="stage 2 loss; several run one after another on the same split "
                            "and backbone features (default arcface)")
    train.add_argument("--margin", type=float, default=None,
                       help="loss margin (default per loss, the study's: contrastive and "
                            "triplet 1, quadruplet 2, CosFace 0.4, ArcFace 0.5)")
    train.add_argument("--margin2", type=float, default=None,
                       help="quadruplet losses' second margin (default 1, the study's)")
    train.add_argument("--scale", type=float, default=None,
                       help="CosFace and ArcFace scale (default 32, the study's)")
    train.add_argument("--sphereface-m", type=int, default=None,
                       help="SphereFace's angular multiplier m (default 4)")
    train.add_argument("--easy-margin", action="store_true",
                       help="ArcFace: apply the margin only where cos theta > 0")
    train.add_argument("--learning-rate", type=float, default=1e-4,
                       help="Adam learning rate of both stages (the study: 1e-4)")
    train.add_argument("--epochs", type=int, nargs=2, default=[50, 30], metavar=("S1", "S2"),
                       help="epochs of stage 1 and of stage 2's metric learning (the study: "
                            "50 30)")
    train.add_argument("--batch-size", type=int, default=64,
                       help="stage 1 batch (the study: 64)")
    train.add_argument("--classifier-epochs", type=int, default=30,
                       help="epochs of stage 2's classification part (the study: 30)")
    train.add_argument("--classifier-batch-size", type=int, default=64,
                       help="its batch (the study: 64)")
    train.add_argument("--batch-classes", type=int, default=None, metavar="P",
                       help="stage 2 batches hold P classes (default: all, at most 8)")
    train.add_argument("--batch-per-class", type=int, default=None, metavar="K",
                       help="... and K images of each (default: min(--shots, 4))")
    train.add_argument("--steps-per-epoch", type=int, default=None,
                       help="stage 2 steps per epoch (default: training images / (P x K), "
                            "at least 1)")
    train.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                       help="write the confusion-matrix, PCA and t-SNE plots (default on; "
                            "--no-plots for benchmarks that need the metrics only)")
    train.add_argument("--tsne-perplexity", type=float, default=30.0,
                       help="t-SNE perplexity, capped at the held-out images - 1 (default 30)")
    add_run_options(train, compute=False)
    return p.parse_args(argv)


class CosineHead(keras.layers.Layer):
    """cos θ between L2-normalised embeddings (B, D) and L2-normalised class weights
    (D, C): (B, C)."""

    def __init__(self, classes, **kwargs):
        super().__init__(**kwargs)
        self.classes = int(classes)

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.classes),
                                 initializer="glorot_uniform", name="class_weights")

    def call(self, embeddings):
        return tf.matmul(embeddings, tf.math.l2_normalize(self.w, axis=0))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


class SimilarityModel(keras.Model):
    """Stage 2: ``trunk`` (the frozen backbone's pooled features are computed outside,
    so ``trunk`` is None, with --freeze-backbone; else it is normalisation + backbone +
    GAP, retrained) ->
    Dense(embedding) -> L2 norm, with a :class:`CosineHead` for the angular losses.
    ``call`` returns the L2-normalised embedding (B, D)."""

    def __init__(self, trunk, embedding_dim, classes, loss_name, loss_options, **kwargs):
        super().__init__(**kwargs)
        self.trunk = trunk
        self.embed = keras.layers.Dense(embedding_dim, name="embedding")
        self.spec = METRIC_LOSSES[loss_name]
        self.loss_options = dict(loss_options)
        self.head = CosineHead(classes, name="cosine_head") if self.spec.kind == "angular" else None
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def raw_embedding(self, x, training=False):
        if self.trunk is not None:
            x = self.trunk(x, training=training)
        return self.embed(x)

    def call(self, x, training=False):
        return tf.math.l2_normalize(self.raw_embedding(x, training), axis=-1)

    def cosine(self, embeddings):
        return self.head(embeddings)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def batch_loss(self, x, y, training=True):
        raw = self.raw_embedding(x, training)
        emb = tf.math.l2_normalize(raw, axis=-1)
        if self.spec.kind == "angular":
            return self.spec.batch_loss(self.head(emb), y, feature_norm=tf.norm(raw, axis=-1),
                                        step=self.optimizer.iterations, **self.loss_options)
        return self.spec.batch_loss(emb, y, **self.loss_options)

    def train_step(self, data):
        x, y = data[:2]
        with tf.GradientTape() as tape:
            loss = self.batch_loss(x, y)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def loss_options(args, loss):
    """The options ``loss`` reads: the command line's, else the study's."""
    spec = METRIC_LOSSES[loss]
    values = {"margin": args.margin, "margin2": args.margin2, "scale": args.scale,
              "m": args.sphereface_m, "easy_margin": args.easy_margin}
    given = {k: values[k] for k in spec.options if values[k] is not None}
    return {**STUDY_DEFAULTS.get(loss, {}), **given}


# The study's classification part after the metric stage.
CLASSIFIER_DROPOUT = 0.2


def classification_part(dim, hidden, classes):
    """embedding (B, dim) -> Dense(hidden)-ReLU-Dropout(0.2)-Dense(classes) softmax:
    the study's two linear layers joined by a ReLU, with dropout."""
    x = keras.Input(shape=(dim,), name="embedding")
    h = keras.layers.Dense(hidden, activation="relu", name="classifier_hidden")(x)
    h = keras.layers.Dropout(CLASSIFIER_DROPOUT, name="classifier_dropout")(h)
    out = keras.layers.Dense(classes, activation="softmax", name="classifier_out")(h)
    return keras.Model(x, out, name="classification_part")


def train_classifier(args, run, stage, emb_train, y_train, emb_test, n_classes):
    """The classification part on the metric stage's embeddings: (predictions on
    ``emb_test``, mean epoch seconds)."""
    head = classification_part(emb_train.shape[1], args.hidden, n_classes)
    seconds = fit_classifier(args, run, head, emb_train, y_train, args.classifier_batch_size,
                             args.classifier_epochs, [EpochLog(run, f"{stage}_classifier_log.csv")])
    return apply_in_batches(head, emb_test, 256).argmax(1), seconds


def fit_classifier(args, run, head, x, y, batch_size, epochs, record):
    """Fit a softmax ``head`` (Adam, cross-entropy) on ``(x, y)`` with the per-epoch
    ``record`` callbacks, the timer first; returns the mean epoch seconds."""
    head.compile(optimizer=FusedAdam(args.learning_rate),
                 loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                 run_eagerly=args.run_eagerly)
    timer = EpochTimer()
    fit_in_run(run, head, x, record=[timer, *record], y=y, batch_size=batch_size, epochs=epochs,
               shuffle=True)
    return timer.mean()


def pk_dataset(inputs, labels, sampler):
    """An endless ``tf.data`` stream of P x K batches gathered from in-memory arrays."""
    def gen():
        for idx in sampler:
            yield inputs[idx].astype(np.float32), labels[idx]

    return tf.data.Dataset.from_generator(gen, output_signature=(
        tf.TensorSpec((None, *inputs.shape[1:]), tf.float32),
        tf.TensorSpec((None,), tf.int32))).prefetch(2)


def normalizer(mean, std):
    """0..255 pixels -> (x / 255 − mean) / std, as layers, so a saved model carries it."""
    return keras.Sequential([keras.layers.Rescaling(1.0 / 255),
                             keras.layers.Normalization(mean=mean.tolist(),
                                                        variance=(std ** 2).tolist())],
                            name="normalize")


def pooled_trunk(backbone, mean, std, input_shape):
    """uint8-range images (B, H, W, 3) -> normalised -> backbone -> GAP: (B, channels)."""
    image = keras.Input(shape=tuple(input_shape), name="image")
    x = normalizer(mean, std)(image)
    x = backbone(x)
    return keras.Model(image, keras.layers.GlobalAveragePooling2D(name="gap")(x), name="trunk")


def apply_in_batches(fn, x, batch_size=64):
    """``fn`` on ``x`` (cast to float32 batch by batch, so uint8 images stay uint8 in
    memory) eagerly: no graph to trace for a one-off pass."""
    return np.concatenate([np.asarray(fn(x[i:i + batch_size].astype(np.float32), training=False))
                           for i in range(0, len(x), batch_size)])


def check_options(args, n_classes):
    """Every option problem, before any image is decoded."""
    p = args.batch_classes or min(n_classes, 8)
    k = args.batch_per_class or min(args.shots, 4)
    for loss in args.loss if "similarity" in args.stages else ():
        spec = METRIC_LOSSES[loss]
        if p < spec.min_classes:
            raise FewShotDataError(f"--loss {loss} mines tuples of {spec.min_classes} "
                                   f"classes; a batch holds {p} (the data set has {n_classes} "
                                   f"classes)")
        if spec.kind == "siamese" and k < 2:
            raise FewShotDataError(f"--loss {loss} needs positives: --batch-per-class must be "
                                   f"at least 2 (and --shots too)")
    return p, k


def evaluate(args, run_dir, stage, y_true, y_pred, embeddings, classes, what):
    """Metrics, per-class report, confusion matrix and embedding plots of one stage."""
    metrics = classification_metrics(y_true, y_pred)
    write_report_csv(run_dir / f"{stage}_report.csv", y_true, y_pred, classes)
    if not args.plots:
        return metrics
    plot_confusion(run_dir / f"{stage}_confusion.png", y_true, y_pred, classes,
                   f"{stage}: accuracy {metrics['accuracy']:.3f}")
    plot_embeddings(run_dir / stage, embeddings, y_true, classes, what, args.seed,
                    args.tsne_perplexity)
    return metrics


def run_transfer(args, run, feats_train, y_train, feats_test, y_test, classes):
    """Stage 1 on the frozen backbone's pooled features (the same as training the full
    model with the backbone frozen and in inference mode, without recomputing it)."""
    n = len(classes)
    features = keras.Input(shape=feats_train.shape[1:], name="features")
    hidden = keras.layers.Dense(args.hidden, activation="relu", name="hidden")(features)
    probs = keras.layers.Dense(n, activation="softmax", name="classes")(hidden)
    head = keras.Model(features, probs, name="transfer_head")
    seconds = fit_classifier(args, run, head, feats_train, y_train, args.batch_size, args.epochs[0],
                             [StopOnNonFinite(run.dir), EpochLog(run, "transfer_training_log.csv")])
    y_pred = apply_in_batches(head, feats_test, 256).argmax(1)
    emb = apply_in_batches(keras.Model(features, hidden), feats_test, 256)
    metrics = evaluate(args, run.dir, "transfer", y_test, y_pred, emb, classes,
                       "the Dense-ReLU features")
    metrics["mean_epoch_seconds"] = seconds
    return metrics


def run_similarity(args, loss, run, trunk, x_train, y_train, x_test, y_test, classes, p, k):
    """Stage 2 with one loss; outputs are named ``similarity_<loss>_*``. ``x_*`` are
    pooled features (--freeze-backbone) or images (the backbone retrained)."""
    stage = f"similarity_{loss}"
    model = SimilarityModel(trunk, args.embedding_dim, len(classes), loss,
                            loss_options(args, loss), name=stage)
    model.compile(optimizer=FusedAdam(args.learning_rate), run_eagerly=args.run_eagerly)
    sampler = PKSampler(y_train, p, k, seed=args.seed)
    steps = args.steps_per_epoch or max(1, len(y_train) // (p * k))
    timer = EpochTimer()
    fit_in_run(run, model, pk_dataset(x_train, y_train.astype(np.int32), sampler),
               record=[timer, StopOnNonFinite(run.dir), EpochLog(run, f"{stage}_training_log.csv")],
               epochs=args.epochs[1], steps_per_epoch=steps, shuffle=False)
    emb_train = apply_in_batches(model, x_train)
    emb_test = apply_in_batches(model, x_test)
    if model.spec.kind == "angular":
        by_metric = np.asarray(model.cosine(emb_test)).argmax(1)
        rule = "cosine head"
    else:
        by_metric = nearest_centroid_predict(emb_train, y_train, emb_test)
        rule = "nearest class centroid"
    y_pred, classifier_seconds = train_classifier(args, run, stage, emb_train, y_train,
                                                  emb_test, len(classes))
    metrics = evaluate(args, run.dir, stage, y_test, y_pred, emb_test, classes,
                       f"the {loss} embedding")
    metrics.update(mean_epoch_seconds=timer.mean(), classified_by="classification part",
                   classifier_epoch_seconds=classifier_seconds,
                   loss=loss, steps_per_epoch=steps, batch=f"{p}x{k}",
                   by_metric={"rule": rule, **classification_metrics(y_test, by_metric)})
    return metrics


def _describe(metrics):
    return (f"accuracy {metrics['accuracy']:.4f}, precision {metrics['precision']:.4f}, "
            f"recall {metrics['recall']:.4f}, F1 {metrics['f1']:.4f}, "
            f"{metrics['mean_epoch_seconds']:.2f} s/epoch")


def main(argv=None):
    """Run the chosen stages; returns {"run_dir", "transfer": metrics,
    "similarity": {loss: metrics}, ...}."""
    args = parse_args(argv)
    try:
        check_backbone(args.backbone, args.input_shape, args.weights)
        data = (read_stage_images if args.stages_from_names else read_class_folders)(args.image_dir)
        p, k = check_options(args, len(data.classes))
        if args.normalize == "encoder":
            encoder_scale_stats(args.weights)   # the card's scale, before decoding
        train_idx, test_idx = split_shots(data.labels, args.shots, args.seed, args.image_dir,
                                          data.classes)
        if "similarity" in args.stages:
            PKSampler(data.labels[train_idx], p, k)   # its own checks, before decoding
        size = tuple(args.input_shape)
        images = load_images(data.paths, size, where=args.image_dir)
    except ValueError as exc:   # FewShotDataError and the backbone's option errors
        raise UserError(str(exc)) from None
    set_seed(args.seed)
    y_train, y_test = data.labels[train_idx], data.labels[test_idx]
    x_train, x_test = images[train_idx], images[test_idx]
    mean, std = normalization_stats(args.normalize, x_train, args.weights)
    input_shape = (*size, 3)
    try:
        backbone, report = build_backbone(args.backbone, input_shape, args.weights)
    except ValueError as exc:   # ImageNet weights missing offline, or no layer matched
        raise UserError(str(exc)) from None

    run_dir = make_run_dir("few_shot", args, root=args.logs_dir)
    run = Run(run_dir)
    print(f"few-shot: {len(data.classes)} classes from {args.image_dir}, {args.shots} shots "
          f"per class ({len(train_idx)} training / {len(test_idx)} held-out images), "
          f"{args.backbone} ({args.weights}), normalisation {args.normalize}; run folder {run_dir}")
    trunk = pooled_trunk(backbone, mean, std, input_shape)
    backbone.trainable = False
    start = time.perf_counter()
    feats_train = apply_in_batches(trunk, x_train, 32)
    feats_test = apply_in_batches(trunk, x_test, 32)
    results = {"classes": data.classes, "train_images": int(len(train_idx)),
               "test_images": int(len(test_idx)), "backbone": args.backbone,
               "weights": args.weights, "normalize": args.normalize,
               "mean": mean.tolist(), "std": std.tolist(),
               "feature_seconds": time.perf_counter() - start,
               "transfer_report": report.summary() if report else None}
    if "transfer" in args.stages:
        results["transfer"] = run_transfer(args, run, feats_train, y_train, feats_test,
                                           y_test, data.classes)
        print("stage 1 (transfer learning): " + _describe(results["transfer"]))
    if "similarity" in args.stages:
        fine_tune = not args.freeze_backbone
        if fine_tune:
            backbone.trainable = True
            initial = backbone.get_weights()
            inputs = (x_train, x_test)
            model_trunk = trunk
        else:
            inputs, model_trunk = (feats_train, feats_test), None
        results["similarity"] = {}
        for loss in args.loss:
            if fine_tune:   # each loss starts from the same backbone weights
                backbone.set_weights(initial)
            m = run_similarity(args, loss, run, model_trunk, inputs[0], y_train, inputs[1],
                               y_test, data.classes, p, k)
            results["similarity"][loss] = m
            print(f"stage 2 (similarity learning, {loss}, by the classification part): "
                  + _describe(m) + f"; by the {m['by_metric']['rule']}: accuracy "
                  f"{m['by_metric']['accuracy']:.4f}")
    run.write_json("results.json", results)
    return {"run_dir": run_dir, **results}


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
