"""CSCL, context-self contrastive pretraining (Tarasiou et al., IEEE TGRS 2022), on the
project's U-Net: supervised pretraining of the whole network but its classifier.

The head sits on the U-Net's last decoder feature map E (the input of ``seg_output``)
and scores every pixel against its k x k neighbours; the loss pulls same-label
neighbours together and pushes the others apart (:func:`other_ssl.losses.cscl_loss`).
"""
import keras
import tensorflow as tf

from other_ssl import losses

# The classifier of the U-Net, the one layer CSCL does not pretrain.
CLASSIFIER = "seg_output"


class ContextSelfSimilarity(keras.layers.Layer):
    """E (B, H, W, C) -> cosine similarities (B, H, W, k, k) of each pixel's query with
    the keys of its k x k window (zero-padded at the border, dilated).

    q and k are 1x1 convolutions without bias to ``attn_channels``; learned relative
    position embeddings are added to the keys, the window row's to the first half of
    the channels and the window column's to the second half, as the authors'
    ``ContextSelfSimilarity``; q and k are L2-normalised, no temperature.
    """

    def __init__(self, attn_channels=128, kernel_size=3, dilation=1, **kwargs):
        # float32: the cosines feed the loss directly.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if attn_channels % 2:
            raise ValueError(f"attn_channels must be even (rows and columns take half "
                             f"each), got {attn_channels}")
        self.attn_channels, self.kernel_size = int(attn_channels), int(kernel_size)
        self.dilation = int(dilation)
        self.query = keras.layers.Conv2D(self.attn_channels, 1, use_bias=False, name="query")
        self.key = keras.layers.Conv2D(self.attn_channels, 1, use_bias=False, name="key")

    def build(self, input_shape):
        self.query.build(input_shape)
        self.key.build(input_shape)
        half = self.attn_channels // 2
        # N(0, 1) as the authors' torch.randn.
        init = keras.initializers.RandomNormal(stddev=1.0)
        self.rel_h = self.add_weight(shape=(self.kernel_size, half), initializer=init,
                                     name="rel_h")
        self.rel_w = self.add_weight(shape=(self.kernel_size, half), initializer=init,
                                     name="rel_w")

    def call(self, features):
        q = tf.math.l2_normalize(self.query(features), axis=-1)
        k = self.key(features)
        h, w = tf.shape(k)[1], tf.shape(k)[2]
        k_size, d = self.kernel_size, self.dilation
        pad = (k_size // 2) * d
        k = tf.pad(k, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        half = self.attn_channels // 2
        rows = []
        # One window offset at a time: never the (B, H, W, k, k, C) tensor of all keys.
        for i in range(k_size):
            cols = []
            for j in range(k_size):
                shifted = k[:, i * d:i * d + h, j * d:j * d + w, :]
                shifted = tf.concat([shifted[..., :half] + self.rel_h[i],
                                     shifted[..., half:] + self.rel_w[j]], axis=-1)
                shifted = tf.math.l2_normalize(shifted, axis=-1)
                cols.append(tf.reduce_sum(q * shifted, axis=-1))
            rows.append(tf.stack(cols, axis=-1))
        return tf.stack(rows, axis=-2)

    def get_config(self):
        return {**super().get_config(), "attn_channels": self.attn_channels,
                "kernel_size": self.kernel_size, "dilation": self.dilation}


def decoder_features(unet):
    """image -> the U-Net's last decoder feature map (the classifier's input), sharing
    the U-Net's layers."""
    return keras.Model(unet.inputs, unet.get_layer(CLASSIFIER).input, name="cscl_features")


class CSCL(keras.Model):
    """A U-Net trained with the CSCL loss on ``(images, one-hot labels)`` batches, the
    batches of ``utils.dataloader.build_dataset``.

    Only the U-Net minus its classifier and the CSCL head are trained; ``unet`` keeps
    its classifier at initialisation, so the saved U-Net loads whole into ``train.py``.
    """

    def __init__(self, unet, attn_channels=128, kernel_size=3, dilation=1, pos_weight=0.125,
                 name="cscl"):
        super().__init__(name=name)
        self.unet = unet
        self.features = decoder_features(unet)
        self.head = ContextSelfSimilarity(attn_channels, kernel_size, dilation, name="cscl_head")
        self.head.build(self.features.outputs[0].shape)
        self.kernel_size, self.dilation = int(kernel_size), int(dilation)
        self.pos_weight = float(pos_weight)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker]

    @property
    def cscl_variables(self):
        """What the optimiser updates: never the classifier."""
        return self.features.trainable_variables + self.head.trainable_variables

    def compile(self, optimizer="adam", **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.cscl_variables)

    def call(self, images, training=False):
        return self.head(self.features(images, training=training))

    def _loss(self, data, training):
        images, onehot = data
        # The dataloader's one-hot targets; the last channel is the ignore label, which
        # here is one more class (the authors pad with a label of its own too).
        labels = tf.argmax(onehot, axis=-1)
        similarity = self(images, training=training)
        same = losses.cscl_targets(labels, self.kernel_size, self.dilation)
        return losses.cscl_loss(similarity, same, self.pos_weight)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            loss = self._loss(data, training=True)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.cscl_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        self.loss_tracker.update_state(self._loss(data, training=False))
        return {"loss": self.loss_tracker.result()}
