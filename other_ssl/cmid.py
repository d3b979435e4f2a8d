"""CMID, contrastive mask image distillation (Muhtar et al., IEEE TGRS 2023; code
``NJU-LHRS/official-CMID``), the ResNet-50 configuration.

Two views per image: a resized crop with a flip, and a second one that is also colour
jittered, blurred, noised, solarized and greyed. The student sees both with 60 % of
a grid of patches masked (filled with the image's mean; a learned mask token is added
to its stride-4 stem output there) and

* reconstructs each view from its top map (focal L1 + focal frequency loss);
* matches the teacher's global key of the other view (MoCo-v2 with a queue);
* matches the teacher's cells of the other view at the 20 nearest cell pairs (DINO).

The teacher is an EMA of the student's encoder and heads and sees the unmasked views.
Only the student encoder (``backbone``) transfers.
"""
import math

import keras
import tensorflow as tf

from few_shot.data import IMAGENET_MEAN, IMAGENET_STD
from other_ssl import augment, losses
from other_ssl.base import PretextMethod, clone_network, ema_update
from other_ssl.losses import embedding_std

# The authors' mask patch at their 224-pixel input; scaled with the input's short side.
MASK_PATCH_AT_224 = 32
# The authors' queue; with queue_size 0 (sized to the data) it is the most used.
AUTHORS_QUEUE = 65536


def _unit_rows(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape), axis=1)


def split_at_stride4(backbone):
    """(stem, trunk): image -> the first stride-4 map (ResNet50: after the max pool),
    and that map -> the top feature map, sharing the backbone's layers."""
    size = backbone.inputs[0].shape[1]
    for layer in backbone.layers[1:]:
        shape = layer.output.shape
        if len(shape) == 4 and shape[1] == size // 4:
            stem_out = layer.output
            break
    else:
        raise ValueError(f"{backbone.name}: no stride-4 layer for CMID's mask token")
    stem = keras.Model(backbone.inputs[0], stem_out, name="stem")
    trunk = keras.Model(stem_out, backbone.outputs[-1], name="trunk")
    return stem, trunk


def global_projector(in_dim, hidden=2048, out_dim=256, name="projector"):
    """The authors' MLP without normalisation: Dense(hidden)-ReLU-Dense(out_dim)."""
    return keras.Sequential([keras.Input((in_dim,)),
                             keras.layers.Dense(hidden, activation="relu"),
                             keras.layers.Dense(out_dim, dtype="float32")], name=name)


class NormalizedDense(keras.layers.Layer):
    """Dense without bias whose weight columns are unit vectors (weight norm, g = 1)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel",
                                      initializer="glorot_uniform")

    def call(self, x):
        return tf.matmul(x, tf.math.l2_normalize(self.kernel, axis=0))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def local_head(in_dim, hidden=2048, bottleneck=256, out_dim=2048, name="local_head"):
    """DINO head on cells (B, K, C): 2 x [Dense(hidden)-BN-GELU] -> Dense(bottleneck) ->
    L2 -> weight-normalised Dense(out_dim)."""
    cells = keras.Input((None, in_dim))
    x = cells
    for _ in range(2):
        x = keras.layers.Dense(hidden)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation("gelu")(x)
    x = keras.layers.Dense(bottleneck)(x)
    x = keras.layers.UnitNormalization(axis=-1)(x)
    out = NormalizedDense(out_dim, dtype="float32", name="prototypes")(x)
    return keras.Model(cells, out, name=name)


def cell_centres(boxes, flips, grid, image_size):
    """Where each top-level cell of a cropped, maybe flipped view lies in the original
    image, in pixels: boxes (B, 4) as y1, x1, y2, x2 in 0..1; flips (B,) bool; grid
    (rows, cols). Returns (B, rows * cols, 2) row-major, as the view's feature map."""
    rows, cols = grid
    h, w = float(image_size[0]), float(image_size[1])
    fy = (tf.range(rows, dtype=tf.float32) + 0.5) / rows
    fx = (tf.range(cols, dtype=tf.float32) + 0.5) / cols
    # A flipped view's first column shows the crop's right edge.
    fx = tf.where(flips[:, None], 1.0 - fx[None, :], fx[None, :])
    y = (boxes[:, 0:1] + fy[None, :] * (boxes[:, 2:3] - boxes[:, 0:1])) * h
    x = (boxes[:, 1:2] + fx * (boxes[:, 3:4] - boxes[:, 1:2])) * w
    y = tf.repeat(y[:, :, None], cols, axis=2)
    x = tf.repeat(x[:, None, :], rows, axis=1)
    return tf.reshape(tf.stack([y, x], axis=-1), (-1, rows * cols, 2))


def match_cells(locations, candidates, num_matches):
    """The authors' position match: each cell of ``locations`` (B, N, 2) finds its
    nearest cell in ``candidates`` (B, M, 2); the ``num_matches`` cells with the
    smallest such distance are kept, in their own order. Returns the kept indices into
    ``locations`` and their neighbours' indices into ``candidates``, both (B, K)."""
    d = tf.norm(locations[:, :, None, :] - candidates[:, None, :, :], axis=-1)
    nearest = tf.argmin(d, axis=2, output_type=tf.int32)
    best = tf.reduce_min(d, axis=2)
    k = min(int(num_matches), int(locations.shape[1]))
    keep = tf.sort(tf.math.top_k(-best, k=k).indices, axis=1)
    return keep, tf.gather(nearest, keep, batch_dims=1)


def patch_mask(batch, grid_shape, cells, ratio):
    """(B, H/4, W/4) float: ``ceil(ratio * cells)`` of a ``cells`` grid masked (1) per
    image, at random, scaled up (nearest) to ``grid_shape``."""
    rows, cols = cells
    n = rows * cols
    count = int(math.ceil(n * ratio))
    scores = tf.random.uniform((batch, n))
    threshold = tf.math.top_k(scores, k=count).values[:, -1:]
    mask = tf.cast(scores >= threshold, tf.float32)
    mask = tf.reshape(mask, (batch, rows, cols, 1))
    return tf.image.resize(mask, grid_shape, method="nearest")[..., 0]


class CMIDViews(keras.layers.Layer):
    """0..255 images -> the first view: a resized crop (area 0.3-1) and a flip,
    normalised as the authors: (x / 255 - mean) / std per channel.

    :meth:`views` gives both views and where each crop came from."""

    def __init__(self, scale=(0.3, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.scale = tuple(scale)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)

    def normalize(self, images):
        """0..1 images -> the network's input."""
        return (images - tf.constant(self.mean)) / tf.constant(self.std)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "mean": self.mean,
                "std": self.std}

    def crop_flip(self, images):
        n = tf.shape(images)[0]
        boxes = augment.random_boxes(n, self.scale)
        flips = tf.random.uniform((n,)) < 0.5
        view = augment.crop_and_resize(images, boxes)
        view = tf.where(flips[:, None, None, None], tf.reverse(view, axis=[2]), view)
        return view, boxes, flips

    def call(self, images, training=True):
        images = tf.cast(images, tf.float32) / 255.0
        return self.normalize(self.crop_flip(images)[0] if training else images)

    def views(self, images):
        """((view1, boxes1, flips1), (view2, boxes2, flips2)), both normalised; view 2
        is also jittered (0.4, 0.4, 0.2, 0.1; p 0.8), blurred, noised (p 0.6), solarized
        (p 0.2) and greyed (p 0.2), in the authors' fixed order, on 0..1 pixels."""
        images = tf.cast(images, tf.float32) / 255.0
        first, second = self.crop_flip(images), self.crop_flip(images)
        view = augment.random_apply(second[0], 0.8, lambda x: augment.color_jitter(
            x, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1))
        view = augment.gaussian_blur(view)
        view = augment.random_noise(view, 0.6)
        view = augment.random_solarize(view, 0.2)
        view = augment.random_grayscale(view, 0.2)
        return ((self.normalize(first[0]), first[1], first[2]),
                (self.normalize(view), second[1], second[2]))


class CMID(PretextMethod):
    """CMID with a ResNet-50 (or any backbone with a stride-4 map). ``width`` is the
    global projection's size (authors: 256); ``pool`` is not used (GAP, as the authors).
    No linear probe.

    Inputs are normalised with ``pixel_mean`` and ``pixel_std`` (0..1 scale; ImageNet's
    unless given; ``train_ssl.py`` gives the training images' own), and the views are
    reconstructed in that space, as the authors.

    The queue keeps each key's image identity: the image index when batches come as
    ``(images, indices)`` (``train_ssl.py``), else a fingerprint of the image's pixels.
    The loss never counts a key of an image in the current batch as a negative (it
    would be a positive), in any order. ``queue_size`` 0 sizes the queue's used part to
    the data: 2 x images per epoch (two keys per image), at most the authors' 65,536;
    any other value is used as given. The queue starts as random unit rows of no image,
    as the authors'; when it holds no valid negative (an epoch of one step), the keys of
    the batch's other images stand in, so the term is never identically 0.
    """
    defaults = {"temperature": 0.2, "queue_size": 0, "momentum_coeff": 0.996,
                "num_matches": 20, "student_temperature": 0.1,
                "teacher_temperature": 0.04, "final_teacher_temperature": 0.07,
                "teacher_warmup_epochs": 50, "center_momentum": 0.9, "mask_ratio": 0.6,
                "fft_weight": 1.0, "hidden": 2048, "local_dim": 2048,
                "pixel_mean": None, "pixel_std": None}
    # train_ssl.py feeds (images, image indices) and the images' statistics.
    needs_image_index = True
    # The authors' lr 1e-3 per GPU of 64 images (their script multiplies it by the GPU
    # count), with a cosine to 1e-6 after 10 warm-up epochs, under Adan with weight
    # decay 0.02 (none on biases and BN).
    schedule = {"learning_rate": 1e-3, "lr_schedule": "cosine", "warmup_epochs": 10,
                "min_learning_rate": 1e-6}
    lr_reference_batch = 64
    run_defaults = {"optimizer": "adan", "weight_decay": 0.02}

    def __init__(self, backbone=None, input_shape=(288, 512, 3), width=256, pool=None,
                 backbone_name="resnet50", augmenter=None, probe_classes=0, name=None,
                 **hyperparameters):
        if probe_classes:
            raise ValueError("cmid has no linear probe: drop --probe-labels")
        super().__init__(backbone, input_shape, backbone_name, name, **hyperparameters)
        self.width = int(width)
        if self.pixel_mean is None or self.pixel_std is None:
            self.pixel_mean, self.pixel_std = IMAGENET_MEAN, IMAGENET_STD
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        self.hyperparameters["pixel_mean"] = self.pixel_mean
        self.hyperparameters["pixel_std"] = self.pixel_std
        self.augmenter = augmenter if augmenter is not None else CMIDViews(
            mean=self.pixel_mean, std=self.pixel_std, name="augmenter")
        self.stem, self.trunk = split_at_stride4(self.backbone)
        image_shape = tuple(self.backbone.inputs[0].shape[1:3])
        top = tuple(self.backbone.outputs[-1].shape[1:])
        self.image_shape, self.grid = image_shape, top[:2]
        self.stride = image_shape[0] // top[0]
        # Zero at start: masked cells first look like the mean-filled image.
        self.mask_token = self.add_weight(shape=(1, 1, 1, self.stem.outputs[0].shape[-1]),
                                          initializer="zeros", name="mask_token")
        # Top map -> stride**2 * 3 channels -> depth-to-space: the image again.
        self.reconstructor = keras.Sequential(
            [keras.Input(top), keras.layers.Conv2D(self.stride ** 2 * 3, 1, dtype="float32")],
            name="reconstructor")
        self.projector = global_projector(top[-1], self.hidden, self.width)
        self.local_head = local_head(top[-1], self.hidden, 256, self.local_dim)
        self.m_backbone = clone_network(self.backbone, "m_backbone")
        self.m_projector = clone_network(self.projector, "m_projector")
        self.m_local_head = clone_network(self.local_head, "m_local_head")
        self.queue = self.add_weight(shape=(int(self.queue_size) or AUTHORS_QUEUE, self.width),
                                     initializer=_unit_rows, trainable=False, name="queue")
        # The image of each queued key; -1: a random start row of no image.
        self.queue_ids = self.add_weight(shape=(self.queue.shape[0],), dtype="int32",
                                         initializer=keras.initializers.Constant(-1),
                                         trainable=False, name="queue_ids")
        # Steps per epoch, set by CMIDSchedule (0: unknown), to size the queue's used part.
        self.epoch_steps = self.add_weight(shape=(), dtype="int32", trainable=False,
                                           initializer="zeros", name="epoch_steps")
        self.center = self.add_weight(shape=(self.local_dim,), initializer="zeros",
                                      trainable=False, name="center")
        # Set by CMIDSchedule during fit; the start values otherwise.
        self.tau = self.add_weight(shape=(), initializer=keras.initializers.Constant(
            self.momentum_coeff), trainable=False, name="tau")
        self.teacher_temp = self.add_weight(shape=(), initializer=keras.initializers.Constant(
            self.teacher_temperature), trainable=False, name="teacher_temp")
        names = ("loss", "rec_loss", "global_loss", "local_loss", "emb_std")
        self.trackers = {k: keras.metrics.Mean(name=k) for k in names}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    @property
    def student_variables(self):
        """What the optimiser updates: never the teacher, queue or centre."""
        nets = (self.backbone, self.reconstructor, self.projector, self.local_head)
        return [self.mask_token] + [v for n in nets for v in n.trainable_variables]

    def compile(self, optimizer="adam", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.student_variables)

    def fit(self, *args, callbacks=None, **kwargs):
        callbacks = list(callbacks or []) + [CMIDSchedule()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def call(self, images, training=False):
        """Global projections of 0..255 images, without augmentation or mask."""
        top = self.backbone(self.augmenter(images, training=False), training=training)[-1]
        return self.projector(tf.reduce_mean(top, axis=(1, 2)), training=training)

    def student(self, masked, mask4, training):
        x = self.stem(masked, training=training)
        x = x + tf.cast(self.mask_token, x.dtype) * tf.cast(mask4[..., None], x.dtype)
        return self.trunk(x, training=training)

    def queue_in_use(self, batch):
        """(keys, image ids): the newest part of the queue the loss reads (all of it
        with a given ``queue_size`` or an unknown epoch length)."""
        queue, ids = tf.convert_to_tensor(self.queue), tf.convert_to_tensor(self.queue_ids)
        steps = tf.convert_to_tensor(self.epoch_steps)
        if self.queue_size:
            return queue, ids
        used = tf.where(steps > 0, tf.clip_by_value(2 * steps * batch, 0, queue.shape[0]),
                        queue.shape[0])
        return queue[:used], ids[:used]

    def negatives(self, ids, keys):
        """(negatives (N, D), valid (B, N)): the queue's keys of images not in the
        batch; when none is left, the batch's keys (``keys``, (2B, D), both views) of
        the other images."""
        queue, queue_ids = self.queue_in_use(tf.shape(ids)[0])
        in_batch = tf.reduce_any(tf.equal(queue_ids[None, :], ids[:, None]), axis=0)
        valid_queue = tf.logical_not(in_batch)
        key_ids = tf.concat([ids, ids], axis=0)
        others = tf.not_equal(ids[:, None], key_ids[None, :])
        others = tf.logical_and(others, tf.logical_not(tf.reduce_any(valid_queue)))
        valid = tf.concat([tf.tile(valid_queue[None, :], [tf.shape(ids)[0], 1]), others], axis=1)
        return tf.concat([queue, tf.cast(keys, queue.dtype)], axis=0), valid

    def masked_view(self, view):
        """The view with ``mask_ratio`` of its patches set to its per-channel mean, the
        mask at stride 4 (for the token) and at full size (for the losses)."""
        h, w = self.image_shape
        patch = MASK_PATCH_AT_224 * min(h, w) / 224
        cells = (max(1, round(h / patch)), max(1, round(w / patch)))
        mask4 = patch_mask(tf.shape(view)[0], (h // 4, w // 4), cells, self.mask_ratio)
        mask = tf.image.resize(mask4[..., None], (h, w), method="nearest")
        mean = tf.reduce_mean(view, axis=(1, 2), keepdims=True)
        return view * (1.0 - mask) + mean * mask, mask4, mask[..., 0]

    def reconstruction_loss(self, view, top, mask):
        restored = tf.nn.depth_to_space(self.reconstructor(top), self.stride)
        return (losses.focal_l1(view, restored, mask)
                + self.fft_weight * losses.focal_frequency_loss(view, restored, mask))

    def _cells(self, top):
        return tf.reshape(top, (tf.shape(top)[0], -1, top.shape[-1]))

    def forward(self, images, training, ids=None):
        (view1, boxes1, flips1), (view2, boxes2, flips2) = self.augmenter.views(images)
        masked1, mask4_1, mask1 = self.masked_view(view1)
        masked2, mask4_2, mask2 = self.masked_view(view2)
        s1, s2 = self.student(masked1, mask4_1, training), self.student(masked2, mask4_2, training)
        t1 = tf.stop_gradient(self.m_backbone(view1, training=training)[-1])
        t2 = tf.stop_gradient(self.m_backbone(view2, training=training)[-1])
        rec = 0.5 * (self.reconstruction_loss(view1, s1, mask1)
                     + self.reconstruction_loss(view2, s2, mask2))

        q1 = self.projector(tf.reduce_mean(s1, axis=(1, 2)), training=training)
        q2 = self.projector(tf.reduce_mean(s2, axis=(1, 2)), training=training)
        k1 = tf.stop_gradient(self.m_projector(tf.reduce_mean(t1, axis=(1, 2)), training=training))
        k2 = tf.stop_gradient(self.m_projector(tf.reduce_mean(t2, axis=(1, 2)), training=training))
        ids = image_ids(images) if ids is None else tf.cast(tf.reshape(ids, (-1,)), tf.int32)
        negatives, valid = self.negatives(ids, tf.math.l2_normalize(tf.concat([k2, k1], 0), 1))
        glob = losses.mocov2_loss(q1, q2, k1, k2, negatives, self.temperature, valid)

        loc1 = cell_centres(boxes1, flips1, self.grid, self.image_shape)
        loc2 = cell_centres(boxes2, flips2, self.grid, self.image_shape)
        local, center = [], tf.convert_to_tensor(self.center)
        for s, t, a, b in ((s1, t2, loc1, loc2), (s2, t1, loc2, loc1)):
            keep, partner = match_cells(a, b, self.num_matches)
            student = self.local_head(tf.gather(self._cells(s), keep, batch_dims=1),
                                      training=training)
            teacher = tf.stop_gradient(self.m_local_head(
                tf.gather(self._cells(t), partner, batch_dims=1), training=training))
            local.append(losses.dino_local_loss(student, teacher, center,
                                                self.student_temperature, self.teacher_temp))
            # As the authors: the centre moves after each direction.
            m = self.center_momentum
            center = m * center + (1.0 - m) * tf.reduce_mean(teacher, axis=(0, 1))
        out = {"rec_loss": rec, "global_loss": glob, "local_loss": 0.5 * (local[0] + local[1])}
        out["loss"] = out["rec_loss"] + out["global_loss"] + out["local_loss"]
        out.update(center=center, keys=tf.concat([k2, k1], axis=0), ids=tf.concat([ids, ids], 0),
                   emb_std=embedding_std(q1))
        return out

    def _results(self, out):
        for key, tracker in self.trackers.items():
            tracker.update_state(out[key])
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        images, ids = _unpack(data)
        with tf.GradientTape() as tape:
            out = self.forward(images, training=True, ids=ids)
            scaled = self.optimizer.scale_loss(out["loss"])
        variables = self.student_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self.center.assign(out["center"])
        size = self.queue.shape[0]
        self.queue.assign(tf.concat([tf.math.l2_normalize(out["keys"], axis=1),
                                     self.queue], axis=0)[:size])
        self.queue_ids.assign(tf.concat([out["ids"], self.queue_ids], axis=0)[:size])
        ema_update([(self.backbone, self.m_backbone), (self.projector, self.m_projector),
                    (self.local_head, self.m_local_head)], self.tau)
        return self._results(out)

    def test_step(self, data):
        images, ids = _unpack(data)
        return self._results(self.forward(images, training=False, ids=ids))


def _unpack(data):
    """(images, image indices or None) of a batch."""
    if isinstance(data, (tuple, list)):
        return data[0], (data[1] if len(data) > 1 else None)
    return data, None


def image_ids(images):
    """An int32 identity per image from its pixels (a fixed weighting of every value,
    the float's bits): the same decoded image gives the same id, in any order."""
    flat = tf.reshape(tf.cast(images, tf.float32), (tf.shape(images)[0], -1))
    weights = tf.sin(tf.range(tf.shape(flat)[1], dtype=tf.float32) * 12.9898) + 1.5
    # Non-negative, so never the -1 of an empty queue row.
    return tf.bitwise.bitwise_and(tf.bitcast(tf.reduce_sum(flat * weights, axis=1), tf.int32),
                                  0x7FFFFFFF)


class CMIDSchedule(keras.callbacks.Callback):
    """The authors' schedules: EMA momentum from its start value to 1 along a cosine
    over all training steps; teacher temperature linear from its start to its final
    value over ``teacher_warmup_epochs`` epochs, then constant; and, with
    ``queue_size`` 0, the part of the queue the loss reads (see :class:`CMID`)."""

    def on_train_begin(self, logs=None):
        steps = self.params.get("steps") or 1
        self.total = max(1, steps * self.params.get("epochs", 1))
        self.step = 0
        self.model.epoch_steps.assign(self.params.get("steps") or 0)

    def on_train_batch_begin(self, batch, logs=None):
        m = self.model
        base = float(m.momentum_coeff)
        m.tau.assign(1.0 - (1.0 - base) * (math.cos(math.pi * self.step / self.total) + 1) / 2)
        self.step += 1

    def on_epoch_begin(self, epoch, logs=None):
        m = self.model
        # Counted from the epoch, so a resumed run continues the cosine.
        self.step = epoch * (self.params.get("steps") or 1)
        warm = max(1, int(m.teacher_warmup_epochs))
        frac = min(1.0, epoch / max(1, warm - 1)) if warm > 1 else 1.0
        m.teacher_temp.assign(m.teacher_temperature
                              + frac * (m.final_teacher_temperature - m.teacher_temperature))

