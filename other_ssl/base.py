"""The base class every ``other_ssl`` method shares, and its building blocks.

A method is a ``keras.Model`` holding

* ``backbone``: image -> [feat1 .. feat5], from ``nets.encoders.build_encoder`` by
  default (any image -> features model works, e.g. a tiny one in tests). This is what
  is saved for ``train.py``;
* ``encoder``: backbone -> last feature map -> Flatten (or global average pooling)
  -> Dense(width), the original's encoder;
* ``projector``: BN -> ReLU -> Dense(width) -> BN, the original's projection head;
* ``predictor`` for the methods that have one (SimSiam, BYOL), else ``None``;
* ``augmenter``: the shared :class:`other_ssl.augment.SSLAugment`.

Subclasses implement :meth:`SSLMethod.ssl_forward` (two views -> loss) and, when they
keep state (queues, momentum networks), :meth:`SSLMethod.after_step`.
"""
import logging

import keras
import tensorflow as tf

from nets.encoders import build_encoder
from other_ssl.augment import SSLAugment
from other_ssl.losses import collapse_threshold, embedding_std, is_collapsed

log = logging.getLogger("other_ssl")

POOLS = ("flatten", "gap")


def wrap_encoder(backbone, width=256, pool="flatten", name="encoder"):
    """image -> backbone's last feature map -> Flatten | GAP -> Dense(width)."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; choose from {', '.join(POOLS)}")
    image = keras.Input(shape=tuple(backbone.inputs[0].shape[1:]), name="ssl_image")
    features = backbone(image)
    last = features[-1] if isinstance(features, (list, tuple)) else features
    pooled = (keras.layers.Flatten(name="flatten") if pool == "flatten"
              else keras.layers.GlobalAveragePooling2D(name="gap"))(last)
    embedding = keras.layers.Dense(width, name="embedding")(pooled)
    return keras.Model(image, embedding, name=name)


def projection_head(width=256, name="projector"):
    """The original's head: BN -> ReLU -> Dense(width) -> BN."""
    return keras.Sequential([keras.Input(shape=(width,)),
                             keras.layers.BatchNormalization(),
                             keras.layers.Activation("relu"),
                             keras.layers.Dense(width),
                             keras.layers.BatchNormalization()], name=name)


def prediction_head(width=256, hidden=64, name="predictor"):
    """SimSiam/BYOL predictor: Dense(hidden) -> BN -> ReLU -> Dense(width), no output BN."""
    return keras.Sequential([keras.Input(shape=(width,)),
                             keras.layers.Dense(hidden, use_bias=False),
                             keras.layers.BatchNormalization(),
                             keras.layers.Activation("relu"),
                             keras.layers.Dense(width)], name=name)


def clone_network(model, name):
    """An independent copy of ``model`` with the same weights (a momentum network)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    # Keep the name distinct from the online network's, for summaries and checkpoints.
    copy.name = name
    return copy


class PretextMethod(keras.Model):
    """What every registered method shares: hyperparameters and the backbone.

    ``defaults`` lists the method's hyperparameters and their default values; they are
    set as attributes and can be overridden as keyword arguments. ``backbone`` (image ->
    feature maps) is what ``train_ssl.py`` saves for ``train.py``.
    """

    defaults = {}
    # The authors' learning rate and its schedule, where they differ from the original's
    # constant Adam 1e-3 (keys of ``other_ssl.training.SCHEDULE_DEFAULTS``).
    schedule = {}
    # The authors' training options where they differ from the original's (keys of
    # ``other_ssl.train_ssl.RUN_DEFAULTS``: input_shape, epochs, batch_size, optimizer,
    # weight_decay).
    run_defaults = {}

    def __init__(self, backbone=None, input_shape=(288, 512, 3), backbone_name="resnet50",
                 name=None, **hyperparameters):
        super().__init__(name=name or type(self).__name__.lower())
        unknown = sorted(set(hyperparameters) - set(self.defaults))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no hyperparameter "
                            f"{', '.join(unknown)}; it takes "
                            f"{', '.join(sorted(self.defaults)) or 'none'}")
        self.hyperparameters = {**self.defaults, **hyperparameters}
        for key, value in self.hyperparameters.items():
            setattr(self, key, value)
        self.backbone = backbone if backbone is not None else build_encoder(
            input_shape, backbone_name)


class SSLMethod(PretextMethod):
    """Base of the two-view methods: two augmented views per image, one optimiser step.

    ``probe_classes > 0`` adds an online linear probe (Dense on the stop-gradient
    encoder output of the first view) trained on integer labels given as
    ``(images, labels)`` batches.
    """

    def __init__(self, backbone=None, input_shape=(288, 512, 3), width=256,
                 pool="flatten", backbone_name="resnet50", augmenter=None,
                 probe_classes=0, name=None, **hyperparameters):
        super().__init__(backbone, input_shape, backbone_name, name, **hyperparameters)
        self.width = int(width)
        self.encoder = wrap_encoder(self.backbone, self.width, pool)
        self.projector = projection_head(self.width)
        self.predictor = self.build_predictor()
        self.augmenter = augmenter if augmenter is not None else SSLAugment(name="augmenter")
        self.probe = (keras.Sequential([keras.Input(shape=(self.width,)),
                                        keras.layers.Dense(int(probe_classes))], name="probe")
                      if probe_classes else None)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.std_tracker = keras.metrics.Mean(name="emb_std")
        self.probe_loss_tracker = keras.metrics.Mean(name="probe_loss")
        self.probe_accuracy = keras.metrics.SparseCategoricalAccuracy(name="probe_acc")
        self.build_state()
        self.augmenter.build(self.encoder.inputs[0].shape)
        # Every sub-network is built above; Keras need not trace ``call`` to build us.
        self.built = True

    # Hooks for subclasses.
    def build_predictor(self):
        return None

    def build_state(self):
        """Create queues and momentum networks."""

    def ssl_forward(self, view1, view2, training):
        """Return a dict with ``loss``, ``z1`` (projection of view 1, for the collapse
        monitor), ``h1`` (encoder output of view 1, for the probe) and anything
        :meth:`after_step` needs."""
        raise NotImplementedError

    def after_step(self, out):
        """Update state after the optimiser step (queues, momentum networks)."""
        # An explicit body: AutoGraph cannot convert a docstring-only function.
        return None

    # Shared machinery.
    def online(self, view, training):
        h = self.encoder(view, training=training)
        return h, self.projector(h, training=training)

    @property
    def ssl_variables(self):
        """What the optimiser updates: never the momentum networks or queues."""
        nets = [self.encoder, self.projector, self.predictor, self.probe]
        return [v for net in nets if net is not None for v in net.trainable_variables]

    @property
    def metrics(self):
        found = [self.loss_tracker, self.std_tracker]
        if self.probe is not None:
            found += [self.probe_loss_tracker, self.probe_accuracy]
        return found

    def compile(self, optimizer="adam", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        # Build the slots for our variables only, not for the momentum networks.
        self.optimizer.build(self.ssl_variables)

    def call(self, images, training=False):
        """Embeddings (encoder output) of 0..255 images, without augmentation."""
        return self.encoder(self.augmenter(images, training=False), training=training)

    def _unpack(self, data):
        if isinstance(data, (tuple, list)):
            images, labels = data[0], data[1] if len(data) > 1 else None
        else:
            images, labels = data, None
        if self.probe is not None and labels is None:
            raise ValueError("this method has a linear probe: feed (images, labels) batches")
        return images, labels

    def _probe(self, out, labels, training):
        logits = self.probe(tf.stop_gradient(out["h1"]), training=training)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels, tf.cast(logits, tf.float32), from_logits=True))
        return logits, loss

    def _results(self, out, labels, logits, probe_loss):
        self.loss_tracker.update_state(out["loss"])
        self.std_tracker.update_state(embedding_std(out["z1"]))
        if self.probe is not None:
            self.probe_loss_tracker.update_state(probe_loss)
            self.probe_accuracy.update_state(labels, logits)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        images, labels = self._unpack(data)
        view1 = self.augmenter(images, training=True)
        view2 = self.augmenter(images, training=True)
        logits = probe_loss = None
        with tf.GradientTape() as tape:
            out = self.ssl_forward(view1, view2, training=True)
            total = out["loss"]
            if self.probe is not None:
                # The probe sees stop-gradient features: it cannot steer the encoder.
                logits, probe_loss = self._probe(out, labels, training=True)
                total = total + probe_loss
            scaled = self.optimizer.scale_loss(total)
        variables = self.ssl_variables
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        self.after_step(out)
        return self._results(out, labels, logits, probe_loss)

    def test_step(self, data):
        images, labels = self._unpack(data)
        view1 = self.augmenter(images, training=True)
        view2 = self.augmenter(images, training=True)
        out = self.ssl_forward(view1, view2, training=False)
        logits = probe_loss = None
        if self.probe is not None:
            logits, probe_loss = self._probe(out, labels, training=False)
        return self._results(out, labels, logits, probe_loss)


class MomentumSSLMethod(SSLMethod):
    """A method with momentum (EMA) copies of the encoder and projector.

    Needs a ``momentum_coeff`` hyperparameter. The copies run in training mode (batch
    statistics) like the online networks, and their weights, BN statistics included,
    move by ``m <- c * m + (1 - c) * online`` after every step.
    """

    def build_state(self):
        self.m_encoder = clone_network(self.encoder, "m_encoder")
        self.m_projector = clone_network(self.projector, "m_projector")

    def target(self, view, training):
        h = self.m_encoder(view, training=training)
        return tf.stop_gradient(self.m_projector(h, training=training))

    def after_step(self, out):
        ema_update([(self.encoder, self.m_encoder), (self.projector, self.m_projector)],
                   self.momentum_coeff)


def ema_update(pairs, coeff):
    """``momentum <- coeff * momentum + (1 - coeff) * online`` for every float weight of
    each ``(online, momentum)`` pair of networks, BN statistics included."""
    c = tf.cast(coeff, tf.float32)
    for online_net, momentum_net in pairs:
        for online, momentum in zip(online_net.weights, momentum_net.weights):
            if not momentum.dtype.startswith("float"):
                continue
            value = c * tf.cast(momentum, tf.float32) + (1.0 - c) * tf.cast(online, tf.float32)
            momentum.assign(tf.cast(value, momentum.dtype))


class CollapseMonitor(keras.callbacks.Callback):
    """Warns when the epoch's ``emb_std`` falls below ``ratio / sqrt(dim)``."""

    def __init__(self, dim, ratio=0.1, key="emb_std"):
        super().__init__()
        self.dim, self.ratio, self.key = dim, ratio, key
        self.collapsed_epochs = []

    def on_epoch_end(self, epoch, logs=None):
        std = (logs or {}).get(self.key)
        if std is None or not is_collapsed(std, self.dim, self.ratio):
            return
        self.collapsed_epochs.append(epoch + 1)
        log.warning("COLLAPSE WARNING: epoch %d: embedding std %.5f < %.5f (%.2f / sqrt(%d); "
                    "healthy is about %.5f): the embeddings have (nearly) collapsed to one "
                    "point; the encoder is unlikely to transfer well.",
                    epoch + 1, std, collapse_threshold(self.dim, self.ratio), self.ratio,
                    self.dim, 1 / self.dim ** 0.5)


def check_embedding(z, ratio=0.1):
    """``(std, collapsed)`` for one batch of embeddings (batch, dim)."""
    std = float(embedding_std(z))
    return std, is_collapsed(std, int(z.shape[-1]), ratio)
