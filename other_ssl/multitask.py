"""Multitask self-supervision (Li, Chen, Shi, IEEE JSTARS 2021; code
``flyakon/SSLRemoteSensing``): inpainting + augmentation recognition + exemplar
contrast, one shared encoder.

Per image and step: the "pre" view (random flips and quarter turns of the image), its
corrupted copy (one jittered, turned block) for inpainting, and the "post" view (one
of six transforms of pre, the class to recognise, then a random crop, colour jitter and
grayscale in random order). Inputs are in [0, 1], as the authors' ToTensor.
"""
import keras
import tensorflow as tf

from other_ssl import augment, losses
from other_ssl.base import PretextMethod

# The authors' colour jitter for the inpainting block and the post view.
JITTER = dict(brightness=0.3, contrast=0.5, saturation=0.5, hue=0.3)
N_TRANSFORMS = len(augment.DIHEDRAL)
QUARTER_TURNS = tuple(lambda x, k=k: augment.rotate90(x, k) for k in range(4))


def _conv_bn_relu(filters, name):
    return [keras.layers.Conv2D(filters, 3, padding="same", name=name + "_conv"),
            keras.layers.BatchNormalization(name=name + "_bn"),
            keras.layers.Activation("relu", name=name + "_relu")]


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def inpainting_network(backbone, final_width=32):
    """image -> backbone -> decoder -> image (no activation).

    The decoder upsamples the top map (bilinear x2) and applies Conv3x3-BN-ReLU to the
    width of the next finer backbone feature, which is then added (stage 4, 3, 2 and
    the stem for ResNet50: widths 1024, 512, 256, 64), then once more to the input size
    at ``final_width`` (32), and a last Conv3x3 to 3 channels.
    """
    image = keras.Input(tuple(backbone.inputs[0].shape[1:]), name="inpainting_image")
    features = backbone(image)
    x = features[-1]
    for i, skip in enumerate(reversed(features[:-1])):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = _apply(_conv_bn_relu(skip.shape[-1], f"inpaint{i + 1}"), x)
        x = keras.layers.Add()([x, skip])
    i = len(features)
    while x.shape[1] < image.shape[1]:
        x = keras.layers.UpSampling2D(2, interpolation="bilinear")(x)
        x = _apply(_conv_bn_relu(final_width, f"inpaint{i}"), x)
        i += 1
    out = keras.layers.Conv2D(3, 3, padding="same", dtype="float32", name="inpaint_pred")(x)
    return keras.Model(image, out, name="inpainter")


def recognition_head(top_shape, classes=N_TRANSFORMS):
    """[F_pre, F_post] (each (h, w, C)) -> concat -> 2 x Conv3x3-BN-ReLU to C -> GAP ->
    Dense(2C)-ReLU-Dropout(0.5) -> Dense(classes) logits."""
    c = top_shape[-1]
    pre, post = keras.Input(top_shape, name="pre"), keras.Input(top_shape, name="post")
    x = keras.layers.Concatenate()([pre, post])
    x = _apply(_conv_bn_relu(c, "agr1") + _conv_bn_relu(c, "agr2"), x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(2 * c, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    logits = keras.layers.Dense(classes, dtype="float32", name="agr_logits")(x)
    return keras.Model([pre, post], logits, name="recognizer")


def exemplar_head(top_shape, width=512):
    """(h, w, C) -> GAP -> Dense(2 * width)-sigmoid -> Dense(width)."""
    return keras.Sequential([keras.Input(top_shape),
                             keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(2 * width, activation="sigmoid"),
                             keras.layers.Dense(width, dtype="float32")], name="exemplar")


class PreTransform(keras.layers.Layer):
    """0..255 images -> the "pre" view in 0..1: random horizontal and vertical flips
    (p = 0.5 each) and a random quarter turn, per image."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, images, training=True):
        images = tf.cast(images, tf.float32) / 255.0
        if not training:
            return images
        images = augment.random_flip(images)
        flip = tf.random.uniform((tf.shape(images)[0], 1, 1, 1)) < 0.5
        images = tf.where(flip, tf.reverse(images, axis=[1]), images)
        turns = tf.random.uniform((tf.shape(images)[0],), 0, 4, dtype=tf.int32)
        return augment.apply_per_sample(images, turns, QUARTER_TURNS)


def post_view(pre, classes):
    """The class transform of each image, then a random crop (ratio 0.7-0.95), the
    colour jitter and grayscale (p = 0.5) in random order."""
    post = augment.apply_per_sample(pre, classes, augment.DIHEDRAL)
    return augment.in_random_order(post, [
        lambda x: augment.random_crop_ratio(x, 0.7, 0.95),
        lambda x: augment.color_jitter(x, **JITTER),
        lambda x: augment.random_grayscale(x, 0.5)])


class Multitask(PretextMethod):
    """Inpainting + augmentation recognition + exemplar, weighted 20 : 1 : 1.

    ``width`` and ``pool`` (options every method is built with) are not used: the heads
    keep the authors' sizes. No linear probe.
    """
    defaults = {"temperature": 1.0, "inpainting_weight": 20.0, "recognition_weight": 1.0,
                "exemplar_weight": 1.0}
    schedule = {"learning_rate": 5e-4, "lr_schedule": "step", "lr_decay": 0.95,
                "lr_decay_epochs": 2}
    # The authors' config: batch 4, 13 epochs, 256x256 crops (the exemplar softmax
    # spans the 2 x batch rows of a step).
    run_defaults = {"batch_size": 4, "epochs": 13, "input_shape": [256, 256]}

    def __init__(self, backbone=None, input_shape=(288, 512, 3), width=None, pool=None,
                 backbone_name="resnet50", augmenter=None, probe_classes=0, name=None,
                 **hyperparameters):
        if probe_classes:
            raise ValueError("multitask has no linear probe: drop --probe-labels")
        super().__init__(backbone, input_shape, backbone_name, name, **hyperparameters)
        self.augmenter = augmenter if augmenter is not None else PreTransform(name="augmenter")
        self.inpainter = inpainting_network(self.backbone)
        top_shape = tuple(self.backbone.outputs[-1].shape[1:])
        self.recognizer = recognition_head(top_shape)
        self.exemplar = exemplar_head(top_shape)
        self.trackers = {k: keras.metrics.Mean(name=k) for k in
                         ("loss", "inpainting_loss", "recognition_loss", "exemplar_loss")}
        self.recognition_accuracy = keras.metrics.SparseCategoricalAccuracy(name="agr_acc")
        self.built = True

    @property
    def metrics(self):
        return [*self.trackers.values(), self.recognition_accuracy]

    def call(self, images, training=False):
        """Exemplar embeddings of 0..255 images, without augmentation."""
        x = self.augmenter(images, training=False)
        return self.exemplar(self.backbone(x, training=training)[-1], training=training)

    def views(self, images):
        """(pre, corrupted, post, class) for a batch of 0..255 images."""
        pre = self.augmenter(images, training=True)
        corrupted = augment.corrupt_block(pre, **JITTER)
        classes = tf.random.uniform((tf.shape(pre)[0],), 0, N_TRANSFORMS, dtype=tf.int32)
        return pre, corrupted, post_view(pre, classes), classes

    def losses_of(self, pre, corrupted, post, classes, training):
        restored = self.inpainter(corrupted, training=training)
        top_pre = self.backbone(pre, training=training)[-1]
        top_post = self.backbone(post, training=training)[-1]
        logits = self.recognizer([top_pre, top_post], training=training)
        out = {"inpainting_loss": losses.inpainting_loss(pre, restored, corrupted),
               "recognition_loss": tf.reduce_mean(
                   tf.nn.sparse_softmax_cross_entropy_with_logits(labels=classes,
                                                                  logits=logits)),
               "exemplar_loss": losses.exemplar_loss(
                   self.exemplar(top_pre, training=training),
                   self.exemplar(top_post, training=training), self.temperature)}
        out["loss"] = (self.inpainting_weight * out["inpainting_loss"]
                       + self.recognition_weight * out["recognition_loss"]
                       + self.exemplar_weight * out["exemplar_loss"])
        return out, logits

    def _results(self, out, classes, logits):
        for key, tracker in self.trackers.items():
            tracker.update_state(out[key])
        self.recognition_accuracy.update_state(classes, logits)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        pre, corrupted, post, classes = self.views(images)
        with tf.GradientTape() as tape:
            out, logits = self.losses_of(pre, corrupted, post, classes, training=True)
            scaled = self.optimizer.scale_loss(out["loss"])
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        return self._results(out, classes, logits)

    def test_step(self, data):
        images = data[0] if isinstance(data, (tuple, list)) else data
        pre, corrupted, post, classes = self.views(images)
        out, logits = self.losses_of(pre, corrupted, post, classes, training=False)
        return self._results(out, classes, logits)
