"""The self-supervised baselines and their registry ``METHODS``.

Hyperparameter defaults are the original ``other_ssl/train_ssl.py`` values for the
methods it had, and the published ones for SimSiam and BYOL, which it lacked.
"""
import tensorflow as tf

from other_ssl import losses
from other_ssl.base import MomentumSSLMethod, SSLMethod, prediction_head
from other_ssl.cmid import CMID
from other_ssl.multitask import Multitask


def _random_unit_rows(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape), axis=1)


def _add_queue(model, size):
    """A (size, width) non-trainable FIFO of L2-normalised embeddings, random at start."""
    return model.add_weight(shape=(int(size), model.width),
                            initializer=_random_unit_rows,
                            trainable=False, dtype="float32", name="queue",
                            aggregation="only_first_replica")


def _push(queue, new):
    """Newest first; the oldest entries fall off the end."""
    size = queue.shape[0]
    queue.assign(tf.concat([tf.math.l2_normalize(tf.cast(new, tf.float32), axis=1),
                            queue], axis=0)[:size])


class SimCLR(SSLMethod):
    """SimCLR (Chen et al. 2020) with the original's InfoNCE between the two views."""
    defaults = {"temperature": 0.1}

    def ssl_forward(self, view1, view2, training):
        h1, z1 = self.online(view1, training)
        _, z2 = self.online(view2, training)
        return {"loss": losses.nt_xent_loss(z1, z2, self.temperature), "z1": z1, "h1": h1}


class NNCLR(SSLMethod):
    """NNCLR (Dwibedi et al. 2021): positives are nearest neighbours from a queue."""
    defaults = {"temperature": 0.1, "queue_size": 10000}

    def build_state(self):
        self.queue = _add_queue(self, self.queue_size)

    def ssl_forward(self, view1, view2, training):
        h1, z1 = self.online(view1, training)
        _, z2 = self.online(view2, training)
        loss = losses.nnclr_loss(z1, z2, self.queue, self.temperature)
        return {"loss": loss, "z1": z1, "h1": h1}

    def after_step(self, out):
        _push(self.queue, out["z1"])


class DCCLR(SSLMethod):
    """Decoupled contrastive learning (Yeh et al. 2021), as the original."""
    defaults = {"temperature": 0.1}

    def ssl_forward(self, view1, view2, training):
        h1, z1 = self.online(view1, training)
        _, z2 = self.online(view2, training)
        return {"loss": losses.dcclr_loss(z1, z2, self.temperature), "z1": z1, "h1": h1}


class BarlowTwins(SSLMethod):
    """Barlow Twins (Zbontar et al. 2021), the original's dimension-free loss."""
    defaults = {"redundancy_reduction_weight": 10.0}

    def ssl_forward(self, view1, view2, training):
        h1, z1 = self.online(view1, training)
        _, z2 = self.online(view2, training)
        loss = losses.barlow_twins_loss(z1, z2, self.redundancy_reduction_weight)
        return {"loss": loss, "z1": z1, "h1": h1}


class HSICTwins(SSLMethod):
    """Barlow Twins with the HSIC target (off-diagonal correlations -> -1)."""
    defaults = {"redundancy_reduction_weight": 3.0}

    def ssl_forward(self, view1, view2, training):
        h1, z1 = self.online(view1, training)
        _, z2 = self.online(view2, training)
        loss = losses.hsic_twins_loss(z1, z2, self.redundancy_reduction_weight)
        return {"loss": loss, "z1": z1, "h1": h1}


class TWIST(SSLMethod):
    """TWIST (Wang et al. 2021): twin class distributions, no hyperparameters."""
    defaults = {}

    def ssl_forward(self, view1, view2, training):
        h1, z1 = self.online(view1, training)
        _, z2 = self.online(view2, training)
        return {"loss": losses.twist_loss(z1, z2), "z1": z1, "h1": h1}


class SimSiam(SSLMethod):
    """SimSiam (Chen & He 2021): predictor + stop-gradient, no negatives, no momentum.

    The predictor is a bottleneck MLP of width ``predictor_hidden`` (default width / 4,
    the paper's 512 for 2048)."""
    defaults = {"predictor_hidden": None}

    def build_predictor(self):
        hidden = self.predictor_hidden or max(1, self.width // 4)
        return prediction_head(self.width, hidden)

    def ssl_forward(self, view1, view2, training):
        h1, z1 = self.online(view1, training)
        _, z2 = self.online(view2, training)
        p1 = self.predictor(z1, training=training)
        p2 = self.predictor(z2, training=training)
        return {"loss": losses.simsiam_loss(p1, p2, z1, z2), "z1": z1, "h1": h1}


class MoCo(MomentumSSLMethod):
    """MoCo v2 (Chen et al. 2020): momentum encoder + projector, a queue of keys,
    symmetric InfoNCE; the original's momentum, temperature and queue size."""
    defaults = {"momentum_coeff": 0.99, "temperature": 0.1, "queue_size": 10000}

    def build_state(self):
        super().build_state()
        self.queue = _add_queue(self, self.queue_size)

    def ssl_forward(self, view1, view2, training):
        h1, q1 = self.online(view1, training)
        _, q2 = self.online(view2, training)
        k1, k2 = self.target(view1, training), self.target(view2, training)
        loss = losses.moco_loss(q1, q2, k1, k2, self.queue, self.temperature)
        return {"loss": loss, "z1": q1, "h1": h1, "k1": k1, "k2": k2}

    def after_step(self, out):
        super().after_step(out)
        _push(self.queue, tf.concat([out["k1"], out["k2"]], axis=0))


class BYOL(MomentumSSLMethod):
    """BYOL (Grill et al. 2020): online predictor regresses the momentum target.

    Published defaults: target momentum 0.996 (kept constant here) and a predictor with
    4096 hidden units."""
    defaults = {"momentum_coeff": 0.996, "predictor_hidden": 4096}

    def build_predictor(self):
        return prediction_head(self.width, self.predictor_hidden)

    def ssl_forward(self, view1, view2, training):
        h1, z1 = self.online(view1, training)
        _, z2 = self.online(view2, training)
        p1 = self.predictor(z1, training=training)
        p2 = self.predictor(z2, training=training)
        t1, t2 = self.target(view1, training), self.target(view2, training)
        return {"loss": losses.byol_loss(p1, p2, t1, t2), "z1": z1, "h1": h1}


class DINO(MomentumSSLMethod):
    """DINO (Caron et al. 2021) as the original: batch centring, sharpened teacher."""
    defaults = {"momentum_coeff": 0.9, "temperature": 0.1, "sharpening": 0.5}

    def ssl_forward(self, view1, view2, training):
        h1, s1 = self.online(view1, training)
        _, s2 = self.online(view2, training)
        t1, t2 = self.target(view1, training), self.target(view2, training)
        loss = losses.dino_loss(s1, s2, t1, t2, self.temperature, self.sharpening)
        return {"loss": loss, "z1": s1, "h1": h1}


METHODS = {"simclr": SimCLR, "moco": MoCo, "simsiam": SimSiam, "byol": BYOL,
           "barlow_twins": BarlowTwins, "nnclr": NNCLR, "dcclr": DCCLR,
           "hsictwins": HSICTwins, "twist": TWIST, "dino": DINO, "multitask": Multitask,
           "cmid": CMID}


def get_method(name):
    """The method class registered under ``name``; a clear error listing the known ones."""
    key = str(name).lower()
    if key not in METHODS:
        raise ValueError(f"unknown self-supervised method {name!r}; known methods: "
                         f"{', '.join(METHODS)}")
    return METHODS[key]


def build_method(name, **kwargs):
    """``METHODS[name](**kwargs)`` with the clear unknown-name error."""
    return get_method(name)(**kwargs)
