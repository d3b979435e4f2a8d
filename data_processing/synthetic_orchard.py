"""The embedded default data set: a synthetic cherry orchard, in the formats the pipeline reads.

Under ``--out`` it writes

- ``archive/<camera>/<preset>_<YYYY-MM-DD>_<HH>.jpg``: a time-lapse archive. Each camera
  watches its own tree from several presets (pan, tilt, zoom) at a few times of day,
  every day of the season, with a few whole days missing as in real archives.
- ``phenology.toml``: the step-1 priors, i.e. the bud date each camera's tree was
  rendered with (optionally perturbed by ``--prior-noise-days``).
- ``VOCdevkit/VOC2007``: a small labelled segmentation set (JPEG photos, PNG masks
  whose pixel values are class indices, train/val/test lists). Train and val photos are
  archive photos (the same bytes); test photos come from extra trees ("test cameras")
  that neither the archive nor the training lists show.
- ``orchard.json``: what was generated (true bud and harvest dates, test cameras, counts).

Each tree goes through dormancy (bare branches), flowering with young leaves, green
fruit among full leaves, fruit turning red, and harvest (leaves, no fruit), on its own
bud date. Every leaf, flower and fruit has its own days, so the change from one day to
the next is small. The photo and its mask are drawn by the same calls into one
four-channel canvas (RGB + class), so the mask is exact, occlusion included.
"""
import argparse
import dataclasses
import datetime
import json
import math
import shutil
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_processing.date_pro import Phenology, Stage, write_phenology  # noqa: E402
from utils.utils import NAME_CLASSES  # noqa: E402
from utils.errors import OutputExists, UserError, writable_dir  # noqa: E402

BACKGROUND, FRUIT, LEAF, TRUNK, FLOWER = range(5)
assert NAME_CLASSES == ["_background_", "fruit", "leaf", "trunk", "flower"]

# The original's stage list; the windows are `WINDOW_DAYS` long.
STAGES = (Stage("dormancy", -12), Stage("green leaves and flowering", 10),
          Stage("young fruit", 45), Stage("colouring and ripening", 84),
          Stage("harvested", None, True))
WINDOW_DAYS = 12
# Days needed before the bud date and after it: the first window, and after the last
# offset window a few picking days and then a whole harvested window.
DAYS_BEFORE_BUD = -min(s.offset for s in STAGES if not s.last)
DAYS_AFTER_BUD = max(s.offset for s in STAGES if not s.last) + 2 * WINDOW_DAYS + 3

# The first entries of the VOC palette, as the original's mask PNGs use.
PALETTE = np.array([(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128)],
                   np.uint8)
JPEG_QUALITY = 90
SHIFT = 4                       # fixed-point bits for subpixel polygon vertices
ONE = 1 << SHIFT

# The background is painted once per tree in world coordinates (metres; x right,
# y up, trunk base at the origin) and warped into every view.
PANO_X = (-5.0, 5.0)
PANO_Y = (-2.5, 5.5)
PANO_RES = 64                   # pixels per metre

# Archetype views per preset: centre (x as a fraction of the canopy width from its
# middle, y as a fraction of the tree height) and view width as a fraction of the
# width that shows the whole canopy. 1-5 are the original's five presets; 6 and 7 are
# close-ups of the canopy (a PTZ camera's zoom presets), where at 64x128 a fruit or a
# flower covers several pixels as it does in a whole-tree photo at the original's
# 576x1024 (in presets 1 and 2 at 64x128: under one pixel). Other preset numbers get
# random views.
PRESET_VIEWS = {1: (0.0, 0.56, 1.0), 2: (-0.25, 0.62, 0.55), 3: (0.25, 0.58, 0.55),
                4: (0.04, 0.8, 0.42), 5: (0.0, 0.32, 0.7), 6: (-0.1, 0.7, 0.22),
                7: (0.15, 0.6, 0.26)}

WEATHERS = ("sunny", "overcast", "haze")


def _smooth(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _rng(*keys):
    """A generator seeded from integers and strings (stable across runs and processes)."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) & 0xFFFFFFFF for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def _date(text, what):
    try:
        return datetime.date.fromisoformat(str(text))
    except ValueError as exc:
        raise UserError(f"{what}: {text!r} is not a YYYY-MM-DD date") from exc


def _value_noise(rng, shape, cells, octaves=3):
    """Smooth noise in [-1, 1] of ``shape`` (h, w): bicubic-upsampled random grids."""
    h, w = shape
    out = np.zeros(shape, np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        gh, gw = max(2, int(cells[0] * 2 ** o)), max(2, int(cells[1] * 2 ** o))
        grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    return np.clip(out / total, -1, 1)


# Config and the orchard's fixed facts

@dataclasses.dataclass
class OrchardConfig:
    """Everything that decides the pixels; shared by the main process and the workers."""
    seed: int
    image_size: tuple
    start: datetime.date
    end: datetime.date
    cameras: list                       # archive camera ids
    test_cameras: list                  # labelled-only trees for the test split
    bud: dict                           # camera -> true bud date
    harvest: dict                       # camera -> last picking day
    weather: dict                       # date ordinal -> (kind, haze, wind)


def _camera_ids(seed, n):
    rng = _rng(seed, "camera-ids")
    ids = []
    while len(ids) < n:
        cam = f"E88{int(rng.integers(0, 10 ** 6)):06d}"
        if cam not in ids:
            ids.append(cam)
    return ids


def _weather_table(seed, start, end):
    """A persistent day-by-day weather shared by the whole orchard (a Markov chain)."""
    rng = _rng(seed, "weather")
    table, kind = {}, int(rng.integers(0, 3))
    for k in range((end - start).days + 1):
        if rng.random() > 0.7:
            kind = int(rng.choice(3, p=[0.5, 0.3, 0.2]))
        haze = {0: 0.03, 1: 0.07, 2: 0.2}[kind] * rng.uniform(0.6, 1.4)
        wind = float(rng.gamma(2.0, 0.5))
        table[(start + datetime.timedelta(days=k)).toordinal()] = (WEATHERS[kind], float(haze), wind)
    return table


# Trees

def _grow_limb(segs, rng, x, y, angle, length, w0, w1, z, level, pieces):
    """Append a bending limb as straight pieces; returns the piece end points."""
    ends = []
    step = length / pieces
    for k in range(pieces):
        # Limbs bend toward the light (vertical) with some wander.
        angle += rng.normal(0, 0.1) - 0.06 * angle / max(1, pieces)
        x1, y1 = x + math.sin(angle) * step, y + math.cos(angle) * step
        wa = w0 + (w1 - w0) * k / pieces
        wb = w0 + (w1 - w0) * (k + 1) / pieces
        segs.append((x, y, x1, y1, wa, wb, z, level))
        ends.append((x1, y1, angle))
        x, y = x1, y1
    return ends


@dataclasses.dataclass
class Tree:
    branches: np.ndarray     # (n, 8): x0 y0 x1 y1 w0 w1 z level
    bark: np.ndarray         # RGB
    spurs: dict
    leaves: dict
    flowers: dict
    bounds: tuple            # canopy x0, x1, y0, y1
    colour_shift: float      # days this tree's fruit colours later than the mean


def _build_tree(seed, camera, bud_ordinal, harvest_ordinal):
    """One cherry tree in open-vase form, and its spurs, leaves and flowers with their days."""
    rng = _rng(seed, camera, "tree")
    size = rng.uniform(0.85, 1.15)
    segs = []
    base_x = rng.normal(0, 0.08)
    trunk_h = rng.uniform(0.5, 0.8) * size
    trunk_w = rng.uniform(0.13, 0.19) * size
    top = _grow_limb(segs, rng, base_x, -0.05, rng.normal(0, 0.06), trunk_h,
                     trunk_w, trunk_w * 0.85, 0.5, 0, 3)[-1]
    n_scaff = int(rng.integers(3, 6))
    spread = rng.uniform(0.8, 1.1)
    limbs = []
    for k in range(n_scaff):
        a = (-spread + 2 * spread * (k + 0.5) / n_scaff) + rng.normal(0, 0.1)
        ln = rng.uniform(1.6, 2.3) * size
        z = float(rng.uniform(0.2, 0.8))
        ends = _grow_limb(segs, rng, top[0] + rng.normal(0, 0.03), top[1], a, ln,
                          trunk_w * 0.55, 0.022, z, 1, 5)
        limbs.append((top[0], top[1], ends, z))
    for x0, y0, ends, z in limbs:
        pts = [(x0, y0, ends[0][2])] + ends
        n_sec = int(rng.integers(4, 8))
        for j in range(n_sec):
            t = rng.uniform(0.15, 0.95)
            i = min(int(t * (len(pts) - 1)), len(pts) - 2)
            px, py, pa = pts[i + 1]
            side = 1 if j % 2 == 0 else -1
            a = float(np.clip(pa + side * rng.uniform(0.45, 1.0), -2.0, 2.0))
            zz = float(np.clip(z + rng.normal(0, 0.2), 0.02, 0.98))
            sec = _grow_limb(segs, rng, px, py, a, rng.uniform(0.5, 1.1) * size,
                             0.03, 0.01, zz, 2, 3)
            for sx, sy, sa in sec[:-1]:
                if rng.random() < 0.7:
                    s = 1 if rng.random() < 0.5 else -1
                    _grow_limb(segs, rng, sx, sy, float(np.clip(sa + s * rng.uniform(0.5, 1.0), -2.1, 2.1)),
                               rng.uniform(0.2, 0.45) * size, 0.012, 0.006,
                               float(np.clip(zz + rng.normal(0, 0.12), 0.02, 0.98)), 3, 2)
    br = np.array(segs, np.float64)

    # Spurs along the small wood (levels >= 1), spaced by length.
    density = rng.uniform(11.0, 16.0)         # spurs per metre
    lengths = np.hypot(br[:, 2] - br[:, 0], br[:, 3] - br[:, 1])
    counts = rng.poisson(lengths * density * (br[:, 7] >= 1) * np.where(br[:, 7] == 1, 0.5, 1.0))
    idx = np.repeat(np.arange(len(br)), counts)
    t = rng.uniform(0, 1, len(idx))
    sx = br[idx, 0] + t * (br[idx, 2] - br[idx, 0]) + rng.normal(0, 0.015, len(idx))
    sy = br[idx, 1] + t * (br[idx, 3] - br[idx, 1]) + rng.normal(0, 0.015, len(idx))
    n_sp = len(idx)
    sz = np.clip(br[idx, 6] + rng.normal(0, 0.12, n_sp), 0, 1)
    early = rng.normal(0, 2.5, n_sp)          # spurs that wake earlier or later
    bx0, bx1 = np.percentile(sx, [1, 99])
    by0, by1 = np.percentile(sy, [1, 99])
    cx = 0.5 * (bx0 + bx1)
    # Sway: outer and higher spurs move more in the wind.
    sway = 0.3 + 0.7 * np.clip(np.hypot((sx - cx) / (bx1 - bx0 + 1e-6),
                                        (sy - by0) / (by1 - by0 + 1e-6)), 0, 1)
    spurs = dict(x=sx, y=sy, z=sz, early=early, sway=sway, angle=rng.uniform(-0.6, 0.6, n_sp))

    bud = bud_ordinal
    # Leaves: a rosette per spur.
    per = rng.integers(3, 7, n_sp)
    li = np.repeat(np.arange(n_sp), per)
    n_l = len(li)
    theta = rng.uniform(0, 2 * np.pi, n_l)
    leaf_len = rng.uniform(0.1, 0.14, n_l) * rng.uniform(0.9, 1.1)
    leaves = dict(
        spur=li, theta=theta, length=leaf_len, width=leaf_len * rng.uniform(0.42, 0.5, n_l),
        appear=bud + 4 + early[li] + rng.uniform(0, 14, n_l), tone=rng.uniform(0.82, 1.15, n_l),
        hue=rng.normal(0, 1, n_l), facing=rng.uniform(0, 2 * np.pi, n_l),
        dz=rng.normal(0, 0.1, n_l), yellow=harvest_ordinal + 25 + rng.exponential(90, n_l),
        flip=rng.random(n_l) < 0.5, rank=rng.random(n_l))
    # Flowers: a cluster per spur; some set fruit.
    per = rng.integers(3, 7, n_sp)
    fi = np.repeat(np.arange(n_sp), per)
    n_f = len(fi)
    open_day = bud + 9 + early[fi] * 0.8 + rng.normal(0, 2.0, n_f)
    fruit_set = rng.random(n_f) < rng.uniform(0.45, 0.6)
    colour_shift = rng.normal(0, 3)
    flowers = dict(
        spur=fi, dx=rng.normal(0, 0.026, n_f), dy=rng.normal(0.006, 0.02, n_f),
        radius=rng.uniform(0.015, 0.02, n_f), rot=rng.uniform(0, 2 * np.pi, n_f),
        open=open_day, fall=open_day + rng.uniform(7, 13, n_f), tone=rng.uniform(0.9, 1.04, n_f),
        pink=rng.uniform(0, 1, n_f), dz=rng.normal(0.05, 0.08, n_f), sets=fruit_set,
        fruit_r=rng.uniform(0.015, 0.02, n_f), stalk=rng.uniform(0.03, 0.055, n_f),
        colour_day=bud + 77 + colour_shift + rng.normal(0, 4, n_f),
        pick=harvest_ordinal - rng.uniform(0, 3.5, n_f), fruit_tone=rng.uniform(0.85, 1.1, n_f),
        rank=rng.random(n_f))
    bark = np.array([108, 70, 62]) * rng.uniform(0.8, 1.1) + rng.normal(0, 6, 3)
    return Tree(br, bark, spurs, leaves, flowers, (bx0, bx1, by0, by1), colour_shift)


# Background

@dataclasses.dataclass
class Scene:
    tree: Tree
    layers: tuple            # ({summer: RGB}, sky alpha, cloud texture) in world coordinates
    petals: dict             # fallen petals on the ground
    views: dict              # preset -> (cx, cy, width_m, roll_deg)
    ground_y: float
    panos: dict = dataclasses.field(default_factory=dict)

    def pano(self, kind, summer):
        """The background for one weather and season: RGB + a zero label channel (uint8)."""
        if (kind, summer) not in self.panos:
            imgs, alpha, clouds = self.layers
            # Slightly soft: the background is out of focus behind the tree.
            self.panos[kind, summer] = cv2.GaussianBlur(
                _compose_sky(imgs[summer], alpha, clouds, kind), (0, 0), 1.0)
        return self.panos[kind, summer]


def _paint_pano(layout):
    """The world behind the tree, without the sky: ground, a pale wall or a field, a net
    on posts, a treeline. Returns {summer: RGB}, the sky's alpha and a cloud texture
    (float32). The seasons differ only in the colour of grass and distant trees, so the
    layers are painted once as weights of those two colours."""
    w = int((PANO_X[1] - PANO_X[0]) * PANO_RES)
    h = int((PANO_Y[1] - PANO_Y[0]) * PANO_RES)
    r = np.random.default_rng(layout["seed"])
    Y = np.broadcast_to((PANO_Y[1] - (np.arange(h, dtype=np.float32) + 0.5) / PANO_RES)[:, None], (h, w))
    X = np.broadcast_to((PANO_X[0] + (np.arange(w, dtype=np.float32) + 0.5) / PANO_RES)[None, :], (h, w))
    n1 = _value_noise(r, (h, w), (6, 8), 3)
    n2 = _value_noise(r, (h, w), (40, 50), 2)
    gy = layout["ground_y"]

    # Ground: soil with grass patches and a dark mulch strip along the row.
    tex = 1 + 0.16 * n2
    grass = _smooth((n1 + layout["grass"]) * 3) * (0.8 + 0.2 * n2)
    base = np.array(layout["soil"], np.float32) * ((1 - grass) * tex)[..., None]
    gw = grass * tex
    mulch = (np.abs(Y + 0.4) < 0.5 + 0.1 * n1) & (np.abs(X) < layout["mulch_w"])
    base[mulch] = (np.array((70, 36, 32), np.float32) * (1 + 0.25 * n2[..., None]))[mulch]
    gw[mulch] = 0

    # Far side: a pale wall, or a field up to the horizon.
    if layout["wall"]:
        horizon = layout["wall_top"]
        wall = np.array(layout["wall_colour"], np.float32) * (1 + 0.03 * n2 + 0.035 * n1)[..., None]
        seams = (np.abs(((Y - gy) / 0.6) % 1 - 0.5) > 0.485) | (np.abs((X / 2.1) % 1 - 0.5) > 0.496)
        wall[seams] *= 0.87
        dirt = (_smooth((gy + 0.3 - Y) / 0.3) * 0.3)[..., None]
        wall = wall * (1 - dirt) + np.array((112, 96, 82), np.float32) * dirt
        zone = (Y >= gy) & (Y < horizon)
        base[zone] = wall[zone]
        gw[zone] = 0
    else:
        horizon = gy + 0.5
        zone = (Y >= gy) & (Y < horizon)
        base[zone] = 0
        gw[zone] = (0.9 * (1 + 0.1 * n2))[zone]

    # A treeline of round crowns along the horizon, with gaps; the sky above.
    crowns = np.zeros((h, w), np.uint8)
    for _ in range(int(layout["treeline_n"])):
        x = r.uniform(*PANO_X)
        rad = r.uniform(0.4, 1.1) * layout["treeline_h"]
        y = horizon + r.uniform(-0.2, 0.5) * rad
        cv2.circle(crowns, (int((x - PANO_X[0]) * PANO_RES), int((PANO_Y[1] - y) * PANO_RES)),
                   int(rad * PANO_RES), 255, -1, cv2.LINE_AA)
    crowns[int((PANO_Y[1] - horizon) * PANO_RES):] = 0
    a = crowns.astype(np.float32) / 255
    base *= (1 - a)[..., None]
    gw *= 1 - a
    tw = a * (1 + 0.22 * n2 + 0.12 * n1)
    alpha = (Y >= horizon).astype(np.float32) * (1 - a)

    # A net on posts in front of the wall or field: a thin diagonal mesh.
    if layout["net"]:
        net = np.zeros((h, w), np.uint8)
        v0 = int((PANO_Y[1] - layout["net_top"]) * PANO_RES)
        v1 = int((PANO_Y[1] - gy + 0.05) * PANO_RES)
        step = max(3, int(layout["mesh"] * PANO_RES))
        for u in range(-h, w + h, step):
            cv2.line(net, (u, v0), (u + (v1 - v0), v1), 255, 1, cv2.LINE_AA)
            cv2.line(net, (u, v0), (u - (v1 - v0), v1), 255, 1, cv2.LINE_AA)
        net[:v0] = 0
        net[v1:] = 0
        cv2.line(net, (0, v0), (w, v0), 255, 2, cv2.LINE_AA)
        for xp in np.arange(PANO_X[0] + r.uniform(0, 2.5), PANO_X[1], layout["post_gap"]):
            u = int((xp - PANO_X[0]) * PANO_RES)
            cv2.rectangle(net, (u - 2, v0 - 2), (u + 2, v1), 255, -1)
        k = net.astype(np.float32) * (layout["net_alpha"] / 255.0)
        base = base * (1 - k)[..., None] + np.array(layout["net_colour"], np.float32) * k[..., None]
        gw *= 1 - k
        tw *= 1 - k
        alpha *= 1 - net.astype(np.float32) / 255.0

    stones = [(r.uniform(*PANO_X), r.uniform(PANO_Y[0], gy - 0.1), r.uniform(110, 170),
               int(r.integers(1, 5)), int(r.integers(1, 3))) for _ in range(int(r.integers(20, 60)))]
    imgs = {}
    for summer in (False, True):
        grass_c = np.array((86, 124, 50) if summer else (126, 114, 78), np.float32)
        tree_c = np.array((68, 92, 70) if summer else (104, 98, 94), np.float32)
        img = base + gw[..., None] * grass_c + tw[..., None] * tree_c
        for x, y, c, ax, ay in stones:
            u, v = int((x - PANO_X[0]) * PANO_RES), int((PANO_Y[1] - y) * PANO_RES)
            cv2.ellipse(img, (u, v), (ax, ay), 0, 0, 360, (c, c * 0.97, c * 0.92), -1, cv2.LINE_AA)
        imgs[summer] = img
    return imgs, alpha, n1


_SKY = {"sunny": ((196, 214, 232), (96, 146, 210)), "overcast": ((222, 224, 228), (196, 200, 206)),
        "haze": ((212, 212, 206), (180, 190, 200))}


def _compose_sky(img, alpha, clouds, kind):
    """Fill the sky for one weather; returns RGB + a zero label channel (uint8)."""
    h = img.shape[0]
    y = PANO_Y[1] - (np.arange(h, dtype=np.float32) + 0.5) / PANO_RES
    t = _smooth((y - 1.8) / 3.5)[:, None, None]
    lo, hi = (np.array(c, np.float32) for c in _SKY[kind])
    sky = lo * (1 - t) + hi * t
    if kind == "sunny":                 # fair-weather clouds
        cl = _smooth((clouds - 0.15) * 2.5)[..., None] * 0.8
        sky = sky * (1 - cl) + np.float32(238) * cl
    else:
        sky = sky * (1 + 0.02 * clouds[..., None])
    out = img * (1 - alpha[..., None]) + sky * alpha[..., None]
    return np.dstack([np.clip(out, 0, 255).astype(np.uint8), np.zeros(alpha.shape, np.uint8)])


def _build_scene(seed, camera, bud_ordinal, harvest_ordinal, presets, aspect):
    """A camera's tree, its background in both seasons and every weather, its views."""
    tree = _build_tree(seed, camera, bud_ordinal, harvest_ordinal)
    rng = _rng(seed, camera, "scene")
    gy = float(rng.uniform(0.15, 0.45))
    layout = dict(
        seed=int(rng.integers(0, 2 ** 31)), ground_y=gy,
        soil=tuple(np.array((98, 74, 60)) * rng.uniform(0.75, 1.15)),
        grass=float(rng.uniform(-0.3, 0.4)), mulch_w=float(rng.uniform(0.6, 1.5)),
        wall=bool(rng.random() < 0.75), wall_top=float(gy + rng.uniform(1.0, 2.0)),
        wall_colour=tuple(np.array((214, 210, 198)) * rng.uniform(0.92, 1.06) + rng.normal(0, 4, 3)),
        treeline_h=float(rng.uniform(0.6, 1.4)), treeline_n=int(rng.integers(0, 30)),
        net=bool(rng.random() < 0.6), net_top=float(gy + rng.uniform(2.0, 3.2)),
        mesh=float(rng.uniform(0.12, 0.2)), post_gap=float(rng.uniform(2.0, 3.0)),
        net_alpha=float(rng.uniform(0.35, 0.6)),
        net_colour=(40, 42, 45) if rng.random() < 0.6 else (225, 225, 220))
    layers = _paint_pano(layout)
    n = 500
    x0, x1, _, y1 = tree.bounds
    petals = dict(x=rng.normal(0.5 * (x0 + x1), 0.45 * (x1 - x0), n),
                  y=rng.uniform(PANO_Y[0], gy - 0.02, n),
                  fall=bud_ordinal + 17 + rng.normal(0, 4, n),
                  gone=rng.uniform(6, 16, n), r=rng.uniform(0.006, 0.011, n))
    cw, top = x1 - x0, y1 + 0.15
    fit = max(1.1 * cw, (top - 0.3) / aspect)
    views = {}
    for p in presets:
        vr = _rng(seed, camera, p, "view")
        fx, fy, fw = PRESET_VIEWS.get(p, (vr.uniform(-0.3, 0.3), vr.uniform(0.3, 0.8), vr.uniform(0.4, 0.9)))
        views[p] = (0.5 * (x0 + x1) + (fx + vr.normal(0, 0.04)) * cw, (fy + vr.normal(0, 0.03)) * top,
                    fw * fit * vr.uniform(0.9, 1.1), vr.normal(0, 0.8))
    return Scene(tree, layers, petals, views, gy)


# Rendering one photo

def _view_matrix(view, shake, h, w):
    """World (metres, y up) -> pixel affine for one preset's view plus the day's shake."""
    cx, cy, width, roll = view
    dx, dy, rot, zoom = shake
    s = w / (width / zoom)
    a = math.radians(roll + rot)
    c, si = math.cos(a) * s, math.sin(a) * s
    return np.array([[c, -si, w / 2 + dx - c * cx + si * cy],
                     [-si, -c, h / 2 + dy + si * cx + c * cy]])


def _to_px(pts, M):
    """(..., 2) world points -> int32 fixed-point pixel coordinates (``SHIFT`` bits)."""
    x, y = pts[..., 0], pts[..., 1]
    out = np.empty(pts.shape, np.int32)
    out[..., 0] = np.rint((M[0, 0] * ONE) * x + (M[0, 1] * ONE) * y + M[0, 2] * ONE)
    out[..., 1] = np.rint((M[1, 0] * ONE) * x + (M[1, 1] * ONE) * y + M[1, 2] * ONE)
    return out


_LEAF = np.array([(0, 0), (0.15, 0.32), (0.4, 0.5), (0.7, 0.38), (1, 0),
                  (0.7, -0.38), (0.4, -0.5), (0.15, -0.32)])
_HALF_LEAF = np.array([(0, 0), (0.15, 0.31), (0.4, 0.49), (0.7, 0.37), (1, 0)])
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 12, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 12, endpoint=False))], 1)
_OCT = np.stack([np.cos(np.linspace(0, 2 * np.pi, 8, endpoint=False)),
                 np.sin(np.linspace(0, 2 * np.pi, 8, endpoint=False))], 1)
_DEC = np.stack([np.cos(np.linspace(0, 2 * np.pi, 10, endpoint=False)),
                 np.sin(np.linspace(0, 2 * np.pi, 10, endpoint=False))], 1)
_STAR = _DEC * np.array([1.0, 0.7] * 5)[:, None]      # five petals

# Fruit colour over ripeness (days from the fruit's colour change / 24).
_RIPE_T = np.array([-1.0, 0.0, 0.16, 0.3, 0.46, 0.7, 1.1])
_RIPE_C = np.array([(112, 160, 58), (150, 182, 78), (208, 168, 86), (214, 92, 58),
                    (178, 30, 38), (122, 12, 26), (86, 8, 20)], np.float64)


def _ramp(t, ts, cs):
    return np.stack([np.interp(t, ts, cs[:, k]) for k in range(3)], -1)


def _shapes(template, centre, along, scale_x, scale_y):
    """Place a template (k, 2) per item: rotate to ``along`` (radians), scale, move."""
    ca, sa = np.cos(along)[:, None], np.sin(along)[:, None]
    tx = template[None, :, 0] * scale_x[:, None]
    ty = template[None, :, 1] * scale_y[:, None]
    return np.stack([centre[:, 0:1] + ca * tx - sa * ty, centre[:, 1:2] + sa * tx + ca * ty], -1)


class _Items:
    """Polygons with colour, class and depth, drawn back to front in one pass into an
    RGB + class canvas, so photo and mask come from the very same fill calls."""

    def __init__(self, h, w):
        self.h, self.w = h, w
        self.polys, self.colours, self.z = [], [], []

    def add(self, px, colour, z, cls, reach=None):
        """``reach``: how far (pixels) an item extends from its first vertex; without
        it the full bounding box decides what is in view."""
        if len(px) == 0:
            return
        if reach is None:
            lo, hi = px.min(axis=1), px.max(axis=1)
        else:
            r = int(math.ceil(reach * ONE)) + ONE
            lo, hi = px[:, 0] - r, px[:, 0] + r
        keep = (hi[:, 0] >= 0) & (lo[:, 0] < self.w * ONE) & (hi[:, 1] >= 0) & (lo[:, 1] < self.h * ONE)
        if not keep.any():
            return
        self.polys.extend(px[keep])
        col = np.empty((int(keep.sum()), 4), np.int32)
        col[:, :3] = np.clip(colour[keep], 0, 255)
        col[:, 3] = cls
        self.colours.append(col)
        self.z.append(z[keep])

    def draw(self, canvas):
        if not self.polys:
            return
        cols = np.concatenate(self.colours).tolist()
        polys = self.polys
        fill = cv2.fillConvexPoly
        for i in np.argsort(np.concatenate(self.z), kind="stable").tolist():
            fill(canvas, polys[i], cols[i], 8, SHIFT)


def _lod(size_px, full_px):
    """Level of detail for items ``size_px`` big on average: the share of them to draw
    and how much to enlarge those, keeping the covered area (fewer fill calls for
    tiny photos; at the default sizes everything is drawn)."""
    keep = float(np.clip((size_px / full_px) ** 2, 0.25, 1.0))
    return keep, 1 / math.sqrt(keep)


def _lighting(weather, hour, rng):
    """Sun direction and strength, ambient light, colour gains, haze for one photo."""
    kind, haze, wind = weather
    sx = float(np.clip((hour - 12) / 4.5, -1, 1))           # sun from the left in the morning
    direct = {"sunny": 1.0, "overcast": 0.12, "haze": 0.5}[kind]
    if kind == "sunny" and rng.random() < 0.15:              # a passing cloud
        direct = 0.35
    warm = 0.5 * abs(sx) + (0.15 if sx > 0 else 0.0) - (0.35 if kind == "overcast" else 0.0)
    gains = np.array([1 + 0.12 * warm, 1 + 0.02 * warm, 1 - 0.16 * warm])
    exposure = {"sunny": 1.0, "overcast": 0.94, "haze": 0.97}[kind] * (1 - 0.06 * abs(sx))
    return dict(kind=kind, sx=sx, direct=direct, ambient=0.62 if kind == "sunny" else 0.85,
                gains=gains, exposure=exposure * rng.normal(1, 0.03),
                haze=haze * rng.uniform(0.8, 1.2),
                wind=wind * rng.uniform(0.4, 1.4) * (1 if rng.random() < 0.5 else -1))


def _shade(light, facing, x, z, tree, foliage):
    """Brightness per item: ambient + sun on its facing, the sunny side of the canopy,
    and darker inside (low z) once the canopy is leafy."""
    x0, x1, _, _ = tree.bounds
    side = np.clip(1 + 0.3 * light["sx"] * (x - 0.5 * (x0 + x1)) / (0.5 * (x1 - x0) + 1e-6), 0.6, 1.3)
    sun = light["direct"] * np.clip(0.5 + 0.5 * np.cos(facing - (np.pi / 2 - 0.9 * light["sx"])), 0, 1) * side
    inner = 1 - (0.35 * foliage + 0.1) * (1 - z)
    return (light["ambient"] * 0.8 + 0.45 * sun) * inner


def render(scene, config, camera, preset, date, hour):
    """Render one photo: returns (rgb uint8 (H, W, 3), label uint8 (H, W))."""
    h, w = config.image_size
    d = date.toordinal()
    rng = _rng(config.seed, camera, preset, d, hour, "photo")
    day = _rng(config.seed, camera, preset, d, "shake")
    # Camera shake: mostly per day (the preset is re-reached each morning), a little per photo.
    shake = (float(np.clip(day.normal(0, 0.004 * w), -0.012 * w, 0.012 * w) + rng.normal(0, 0.0008 * w)),
             float(np.clip(day.normal(0, 0.004 * w), -0.012 * w, 0.012 * w) + rng.normal(0, 0.0008 * w)),
             float(day.normal(0, 0.25)), float(day.normal(1, 0.004)))
    M = _view_matrix(scene.views[preset], shake, h, w)
    light = _lighting(config.weather[d], hour, rng)
    tree = scene.tree
    bud = config.bud[camera].toordinal()
    mm = math.hypot(M[0, 0], M[0, 1])            # pixels per metre

    # Background: the winter and summer panoramas blended by the season.
    P = np.array([[1 / PANO_RES, 0, PANO_X[0]], [0, -1 / PANO_RES, PANO_Y[1]], [0, 0, 1]])
    A = (np.vstack([M, [0, 0, 1]]) @ P)[:2]
    green = float(_smooth((d - bud - 10) / 50.0))
    warp = [cv2.warpAffine(scene.pano(light["kind"], summer), A, (w, h), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
            for summer, wt in ((False, 1 - green), (True, green)) if wt > 0.01]
    canvas = warp[0] if len(warp) == 1 else cv2.addWeighted(warp[0], 1 - green, warp[1], green, 0)

    items = _Items(h, w)
    # Fallen petals on the ground: white, and background.
    pt = scene.petals
    age = d - pt["fall"]
    on = (age > 0) & (age < pt["gone"])
    if on.any():
        c = np.stack([pt["x"][on], pt["y"][on]], 1)
        r = pt["r"][on]
        px = _to_px(_shapes(_OCT, c, np.zeros(len(r)), r, r * 0.6), M)
        col = np.array((232, 226, 222)) * (0.8 + 0.25 * light["direct"]) * np.ones((len(r), 1))
        items.add(px, col, np.full(len(r), -1.0), BACKGROUND, 3 * float(r.max()) * mm)

    foliage = float(_smooth((d - bud - 8) / 35.0))
    wind = light["wind"]
    sp = tree.spurs
    sway_x = wind * 0.012 * sp["sway"]

    # Branches: a dark quad per piece, round joints, a lit strip toward the sun.
    br = tree.branches
    p0, p1 = br[:, 0:2], br[:, 2:4]
    dvec = p1 - p0
    nrm = np.stack([-dvec[:, 1], dvec[:, 0]], 1) / (np.hypot(dvec[:, 0], dvec[:, 1])[:, None] + 1e-9)
    w0, w1 = br[:, 4:5] / 2, br[:, 5:6] / 2
    quad = np.stack([p0 + nrm * w0, p1 + nrm * w1, p1 - nrm * w1, p0 - nrm * w0], 1)
    bark = tree.bark[None, :] * (0.8 * _shade(light, np.full(len(br), np.pi / 2), br[:, 0],
                                               br[:, 6], tree, foliage))[:, None]
    items.add(_to_px(quad, M), bark, br[:, 6], TRUNK)
    wide = br[:, 5] * mm >= 2.5
    joints = _shapes(_OCT, p1[wide], np.zeros(wide.sum()), br[wide, 5] / 2, br[wide, 5] / 2)
    items.add(_to_px(joints, M), bark[wide], br[wide, 6] + 1e-6, TRUNK)
    sel = br[:, 4] * mm >= 4
    sun = np.array([math.sin(0.9 * light["sx"]), math.cos(0.9 * light["sx"])])   # toward the sun
    side = np.where(nrm[sel] @ sun >= 0, 1.0, -1.0)[:, None] * 0.3
    ws0, ws1 = w0[sel], w1[sel]
    q0, q1, n_ = p0[sel], p1[sel], nrm[sel]
    strip = np.stack([q0 + n_ * ws0 * (side + 0.35), q1 + n_ * ws1 * (side + 0.35),
                      q1 + n_ * ws1 * (side - 0.35), q0 + n_ * ws0 * (side - 0.35)], 1)
    items.add(_to_px(strip, M), bark[sel] * (1.12 + 0.25 * light["direct"]), br[sel, 6] + 2e-6, TRUNK)

    # Dormant buds on the spurs, until the leaves and flowers take over.
    bud_age = d - bud - sp["early"]
    on = bud_age < 6
    if on.any():
        sw = 0.4 + 0.6 * _smooth((bud_age[on] + 30) / 30)
        c = np.stack([sp["x"][on] + sway_x[on] * 0.3, sp["y"][on]], 1)
        px = _to_px(_shapes(_OCT, c, np.pi / 2 + sp["angle"][on], 0.011 * sw, 0.006 * sw), M)
        col = np.array((86, 58, 48)) * (0.9 + 0.3 * _smooth(bud_age[on] / 6 + 1))[:, None]
        col = col * _shade(light, np.full(on.sum(), 1.0), sp["x"][on], sp["z"][on], tree, 0)[:, None]
        items.add(px, col, sp["z"][on] + 0.01, TRUNK, 0.03 * mm)

    # Leaves: unfold light yellow-green, darken as they mature, droop, flutter.
    L = tree.leaves
    age = d - L["appear"]
    # Small in the picture: draw a fixed share of the leaves, enlarged to cover as much.
    keep, grow_lod = _lod(float(L["length"].mean() * mm), 7.0)
    on = (age > 0) & (L["rank"] < keep)
    if on.any():
        s_idx = L["spur"][on]
        grow = _smooth(age[on] / 24.0)
        mature = _smooth((age[on] - 6) / 30.0)
        length = L["length"][on] * (0.2 + 0.8 * grow) * grow_lod
        width = L["width"][on] * (0.2 + 0.8 * grow) * grow_lod
        theta = L["theta"][on]
        down = (-np.pi / 2 - theta + np.pi) % (2 * np.pi) - np.pi
        theta = theta + 0.3 * mature * down
        theta = theta + rng.normal(0, 0.06 + 0.05 * abs(wind), len(theta)) + 0.1 * wind * sp["sway"][s_idx]
        base = np.stack([sp["x"][s_idx] + sway_x[s_idx], sp["y"][s_idx]], 1)
        base = base + np.stack([np.cos(theta), np.sin(theta)], 1) * 0.012
        hue = L["hue"][on][:, None]
        col = (np.array((160, 196, 84)) + hue * (8, 4, -6)) * (1 - mature)[:, None] \
            + (np.array((58, 112, 44)) + hue * (6, 6, 2)) * mature[:, None]
        yel = _smooth((d - L["yellow"][on]) / 20.0)[:, None] * 0.6
        col = col * (1 - yel) + np.array((168, 158, 62)) * yel
        z = sp["z"][s_idx] + L["dz"][on]
        shade = _shade(light, L["facing"][on], base[:, 0], np.clip(z, 0, 1), tree, foliage)
        col = col * (L["tone"][on] * shade)[:, None]
        reach = float(length.max()) * mm
        items.add(_to_px(_shapes(_LEAF, base, theta, length, width), M), col, z, LEAF, reach)
        # The fold of a leaf: one half catches more light than the other.
        big = (length * mm >= 14) & (z > 0.35)      # the back ones are mostly hidden
        if big.any():
            flip = np.where(L["flip"][on][big], -1.0, 1.0)
            half = _shapes(_HALF_LEAF, base[big], theta[big], length[big], width[big] * flip)
            items.add(_to_px(half, M), col[big] * (1.1 + 0.12 * light["direct"]), z[big] + 1e-6,
                      LEAF, reach)

    # Flowers: buds swell pink-white, open white, then drop their petals.
    F = tree.flowers
    age = d - F["open"]
    keep, grow_lod = _lod(float(F["radius"].mean() * mm), 2.5)
    on = (age > -6) & (d < F["fall"]) & (F["rank"] < keep)
    if on.any():
        s_idx = F["spur"][on]
        opened = _smooth(age[on] / 2.0 + 0.3)
        wilt = _smooth((d - F["fall"][on] + 3) / 3.0)
        radius = F["radius"][on] * (0.32 + 0.68 * opened) * (1 - 0.25 * wilt) * grow_lod
        c = np.stack([sp["x"][s_idx] + sway_x[s_idx] + F["dx"][on], sp["y"][s_idx] + F["dy"][on]], 1)
        col = np.array((246, 244, 238)) * F["tone"][on][:, None] * opened[:, None] \
            + np.array((238, 205, 212)) * (1 - opened)[:, None]
        col = col + F["pink"][on][:, None] * (0, -7, -4)
        col = col * (1 - 0.2 * wilt)[:, None] + np.array((190, 170, 140)) * 0.2 * wilt[:, None]
        z = np.clip(sp["z"][s_idx] + F["dz"][on], 0, 1)
        shade = np.clip(1.05 * _shade(light, F["rot"][on], c[:, 0], z, tree, foliage * 0.5), 0, 1.1)
        col = col * shade[:, None]
        shape = np.where(opened[:, None, None] > 0.6, _STAR[None], _DEC[None] * 0.8)
        rot = F["rot"][on]
        cr, sr = np.cos(rot)[:, None], np.sin(rot)[:, None]
        sx_, sy_ = shape[..., 0] * radius[:, None], shape[..., 1] * radius[:, None]
        poly = np.stack([c[:, 0:1] + cr * sx_ - sr * sy_, c[:, 1:2] + sr * sx_ + cr * sy_], -1)
        reach = 2.2 * float(radius.max()) * mm
        items.add(_to_px(poly, M), col, z + 0.02, FLOWER, reach)
        eye = (opened > 0.6) & (radius * mm >= 3.5)
        if eye.any():
            px = _to_px(_shapes(_OCT, c[eye], rot[eye], radius[eye] * 0.28, radius[eye] * 0.28), M)
            items.add(px, np.array((214, 196, 92)) * shade[eye, None], z[eye] + 0.02 + 1e-6, FLOWER, reach)

    # Fruit: set after petal fall, swell, colour from green to dark red, are picked.
    age = d - F["fall"]
    on = F["sets"] & (age > 0) & (d < F["pick"])
    if on.any():
        s_idx = F["spur"][on]
        grow = _smooth(age[on] / 42.0)
        radius = F["fruit_r"][on] * (0.22 + 0.78 * grow)
        hang = F["stalk"][on] * (0.4 + 0.6 * grow)
        c = np.stack([sp["x"][s_idx] + sway_x[s_idx] * 1.5 + F["dx"][on] * 0.7,
                      sp["y"][s_idx] + F["dy"][on] * 0.3 - hang], 1)
        col = _ramp((d - F["colour_day"][on]) / 24.0, _RIPE_T, _RIPE_C) * F["fruit_tone"][on][:, None]
        z = np.clip(sp["z"][s_idx] + F["dz"][on] + 0.04, 0, 1)
        shade = _shade(light, np.full(len(z), np.pi / 2), c[:, 0], z, tree, foliage)
        base = col * (shade * 0.9)[:, None]
        zero = np.zeros(len(z))
        reach = 2.2 * float(radius.max()) * mm
        items.add(_to_px(_shapes(_CIRCLE, c, zero, radius, radius * 1.05), M), base, z, FRUIT, reach)
        toward = sun * 0.7
        rp = radius * mm
        hl = rp >= 2
        items.add(_to_px(_shapes(_OCT, c[hl] + toward * radius[hl, None] * 0.35, zero[hl],
                                 radius[hl] * 0.55, radius[hl] * 0.55), M),
                  base[hl] * (1.15 + 0.15 * light["direct"]), z[hl] + 1e-6, FRUIT, reach)
        spec = (rp >= 3.5) & (light["direct"] > 0.3)
        if spec.any():
            spot = base[spec] * 0.4 + np.array((250, 242, 236)) * 0.6 * light["direct"]
            items.add(_to_px(_shapes(_OCT, c[spec] + toward * radius[spec, None] * 0.55, zero[spec],
                                     radius[spec] * 0.17, radius[spec] * 0.17), M),
                      spot, z[spec] + 2e-6, FRUIT, reach)

    items.draw(canvas)
    label = np.ascontiguousarray(canvas[..., 3])

    # Camera: white balance, exposure, haze veil (one colour matrix), soft optics,
    # low-frequency light (dappled sun, the tree's shadow, vignette), sensor noise.
    hz = light["haze"]
    sat = 1 - (0.2 if light["kind"] != "sunny" else 0.0) - 0.5 * hz
    S = sat * np.eye(3) + (1 - sat) * np.array([[0.299, 0.587, 0.114]] * 3)
    G = np.diag(light["gains"] * light["exposure"])
    haze_c = np.array((205, 208, 212)) * light["exposure"]
    T = np.hstack([(1 - hz) * G @ S, (hz * haze_c)[:, None]])
    img = cv2.transform(np.ascontiguousarray(canvas[..., :3]), T)
    img = cv2.GaussianBlur(img, (3, 3), 0.65)
    field = cv2.cvtColor(_light_field(rng, light, M, scene, h, w), cv2.COLOR_GRAY2RGB)
    img = cv2.multiply(img, field, scale=1 / 128.0)
    noise = 2.5 + 2.0 * (light["kind"] != "sunny")
    img = cv2.addWeighted(img, 1.0, _noise(config.seed, h, w, rng), noise, 0, dtype=cv2.CV_8U)
    return img, label


def _light_field(rng, light, M, scene, h, w):
    """Low-frequency brightness x128 (uint8): dappled sun, the tree's shadow on the
    ground, vignetting."""
    gh, gw = max(4, h // 16), max(4, w // 16)
    cells = rng.uniform(-1, 1, (4, 6)).astype(np.float32)
    f = np.ones((gh, gw), np.float32)
    direct = light["direct"]
    if direct > 0.3:
        f += (0.06 * direct) * cv2.resize(cells, (gw, gh), interpolation=cv2.INTER_CUBIC)
        x0, x1, _, _ = scene.tree.bounds
        c = np.array([0.5 * (x0 + x1) + 0.8 * light["sx"], scene.ground_y - 0.6]) @ M[:, :2].T + M[:, 2]
        ax = 0.55 * (x1 - x0) * math.hypot(M[0, 0], M[0, 1]) / 16
        sh = np.zeros((gh, gw), np.float32)
        cv2.ellipse(sh, (int(c[0] / 16), int(c[1] / 16)), (max(1, int(ax)), max(1, int(ax * 0.3))),
                    0, 0, 360, 0.3 * direct, -1)
        f -= sh
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    f *= 1 - 0.08 * (((xx - gw / 2) / (gw / 2)) ** 2 + ((yy - gh / 2) / (gh / 2)) ** 2)
    return cv2.resize(np.clip(f * 128, 0, 255).astype(np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)


_NOISE = {}


def _noise(seed, h, w, rng):
    """Sensor noise: a crop of a per-size noise bank (cheaper than fresh noise per photo)."""
    key = (seed, h, w)
    if key not in _NOISE:
        _NOISE.clear()
        _NOISE[key] = _rng(seed, h, w, "noise").standard_normal((h + 32, w + 32, 3)).astype(np.float32)
    oy, ox = int(rng.integers(0, 32)), int(rng.integers(0, 32))
    return _NOISE[key][oy:oy + h, ox:ox + w]


# Workers

_STATE = {}


def _init_worker(config, presets, one_thread=False):
    if one_thread:          # one core per worker process
        cv2.setNumThreads(1)
    _STATE.clear()
    _STATE.update(config=config, presets=presets, scenes={})


def _scene(camera):
    scenes = _STATE["scenes"]
    if camera not in scenes:
        cfg = _STATE["config"]
        scenes[camera] = _build_scene(cfg.seed, camera, cfg.bud[camera].toordinal(),
                                      cfg.harvest[camera].toordinal(), _STATE["presets"],
                                      cfg.image_size[0] / cfg.image_size[1])
    return scenes[camera]


def _encode_jpeg(rgb):
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def save_mask(path, label):
    """A palette PNG whose pixel values are the class indices."""
    im = Image.fromarray(label, mode="P")
    pal = np.zeros((256, 3), np.uint8)
    pal[:len(PALETTE)] = PALETTE
    im.putpalette(pal.ravel().tolist())
    im.save(path)


def _task(task):
    """Render and write one photo (and its mask for labelled photos)."""
    camera, preset, ordinal, hour, jpg, png = task
    cfg = _STATE["config"]
    rgb, label = render(_scene(camera), cfg, camera, preset,
                        datetime.date.fromordinal(ordinal), hour)
    Path(jpg).write_bytes(_encode_jpeg(rgb))
    if png:
        save_mask(png, label)
    return jpg


# The whole orchard

def _check(cameras, presets, times, start, end, image_size, n_train, n_val, n_test,
           test_cameras, missing_rate, prior_noise_days, workers):
    if int(cameras) < 1:
        raise UserError(f"cameras={cameras}: the orchard needs at least one camera")
    if not presets or any(int(p) < 1 for p in presets):
        raise UserError(f"presets={presets!r}: give one or more preset numbers >= 1")
    if not times:
        raise UserError("times is empty: give one or more hours, e.g. 09 12 15")
    hours = []
    for t in times:
        try:
            hr = int(t)
        except (TypeError, ValueError):
            raise UserError(f"time {t!r} is not an hour (00..23)") from None
        if not 0 <= hr <= 23:
            raise UserError(f"time {t!r} is not an hour (00..23)")
        hours.append(hr)
    if len(set(hours)) != len(hours) or len(set(presets)) != len(presets):
        raise UserError(f"presets {presets!r} and times {times!r} must not repeat")
    if len(image_size) != 2 or any(int(s) <= 0 or int(s) % 32 for s in image_size):
        raise UserError(f"image size {tuple(image_size)} (height, width): both must be positive "
                         f"multiples of 32, as the U-Net and its ResNet50 encoder (stride 32) need")
    days = (end - start).days
    need = DAYS_BEFORE_BUD + DAYS_AFTER_BUD
    if days < need:
        raise UserError(
            f"season {start}..{end} is {days} days; the stage windows need at least {need}: "
            f"{DAYS_BEFORE_BUD} days of dormancy before the bud date, the windows up to "
            f"bud+{DAYS_AFTER_BUD - WINDOW_DAYS - 3}, a few picking days and a "
            f"{WINDOW_DAYS}-day harvested window before the end")
    if min(n_train, n_val, n_test) < 0:
        raise UserError("labelled counts must not be negative")
    if n_test > 0 and test_cameras < 1:
        raise UserError("n_test > 0 needs at least one test camera (test_cameras >= 1)")
    if not 0 <= missing_rate < 1:
        raise UserError(f"missing_rate={missing_rate} must be in [0, 1)")
    if prior_noise_days < 0:
        raise UserError("prior_noise_days must be >= 0")
    if int(workers) < 1:
        raise UserError("workers must be >= 1")
    return [f"{h:02d}" for h in hours]


OVERWRITE_FIX = "pass --overwrite (overwrite=True) to replace the generated orchard in it"


def _prepare_out(out, contact_sheet, overwrite, fix=OVERWRITE_FIX):
    """Refuse to write into a non-empty folder unless ``overwrite`` (``fix``: what the
    caller's user can do instead, naming the caller's options); then only the
    generator's own outputs are removed, never anything else in the folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputExists(out, "exists and is not empty", fix)
        for name in ("archive", "VOCdevkit"):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for name in ("phenology.toml", "orchard.json"):
            (out / name).unlink(missing_ok=True)
    if contact_sheet is not None and Path(contact_sheet).exists() and not overwrite:
        raise OutputExists(contact_sheet, "contact sheet exists", fix)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _stage_dates(cfg, camera, dates):
    """Per stage, the season dates of its window for this camera (all dates for the last)."""
    bud = cfg.bud[camera]
    out = []
    for s in STAGES:
        if s.last:
            out.append([x for x in dates[-WINDOW_DAYS:]])
        else:
            first = bud + datetime.timedelta(days=s.offset)
            out.append([first + datetime.timedelta(days=k) for k in range(WINDOW_DAYS)])
    return out


def _pick_labelled(rng, cfg, cameras, presets, hours, n, present, used):
    """``n`` distinct photos spread over cameras and stages: five of every six in a
    stage window in turn, the sixth anywhere in the season (so transitions occur too)."""
    season = [cfg.start + datetime.timedelta(days=k) for k in range((cfg.end - cfg.start).days + 1)]
    picked, tries = [], 0
    while len(picked) < n:
        tries += 1
        if tries > 200 * (n + 10):
            raise UserError(f"cannot pick {n} distinct labelled photos from cameras {cameras}; "
                             f"use more cameras, presets, times or a longer season")
        k = len(picked)
        slot = k % 6
        cam = cameras[(k + k // 6) % len(cameras)]      # every camera gets every stage
        pool = season if slot == 5 else _stage_dates(cfg, cam, season)[slot]
        date = pool[int(rng.integers(0, len(pool)))]
        key = (cam, int(presets[int(rng.integers(0, len(presets)))]), date.toordinal(),
               hours[int(rng.integers(0, len(hours)))])
        if key in used or (present is not None and key not in present):
            continue
        used.add(key)
        picked.append(key)
    return picked


def _contact_sheet(path, cfg, presets, hours, tile_w=384):
    """One preset across the five stages for every camera, each photo with its mask."""
    h, w = cfg.image_size
    tw = min(tile_w, w)
    th = int(round(h * tw / w))
    head = 18
    season = [cfg.start + datetime.timedelta(days=k) for k in range((cfg.end - cfg.start).days + 1)]
    hour = 12 if 12 in hours else hours[len(hours) // 2]
    preset = presets[0]
    rows = []
    cams = [(c, "") for c in cfg.cameras] + [(c, " (test)") for c in cfg.test_cameras]
    for cam, tag in cams:
        tiles = []
        for s, window in zip(STAGES, _stage_dates(cfg, cam, season)):
            date = window[len(window) // 2]
            rgb, label = render(_scene(cam), cfg, cam, preset, date, hour)
            a = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA)
            b = cv2.resize(PALETTE[np.minimum(label, len(PALETTE) - 1)], (tw, th),
                           interpolation=cv2.INTER_NEAREST)
            pair = np.full((th + head, 2 * tw + 2, 3), 255, np.uint8)
            pair[head:, :tw] = a
            pair[head:, tw + 2:] = b
            text = f"{cam}{tag} p{preset} {date} {hour:02d}h: {s.name}"
            cv2.putText(pair, text, (3, head - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
            tiles.append(pair)
            tiles.append(np.full((th + head, 8, 3), 255, np.uint8))
        rows.append(np.hstack(tiles[:-1]))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    sheet = np.vstack(rows[:-1])
    legend = np.full((22, sheet.shape[1], 3), 255, np.uint8)
    x = 4
    for k, name in enumerate(NAME_CLASSES):
        cv2.rectangle(legend, (x, 5), (x + 14, 17), tuple(int(v) for v in PALETTE[k]), -1)
        cv2.putText(legend, name, (x + 18, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        x += 30 + 9 * len(name)
    sheet = np.vstack([legend, sheet])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write the contact sheet {path}")
    return Path(path)


def make_config(cameras=4, start="2021-01-01", end="2021-07-01", image_size=(576, 1024),
                seed=0, test_cameras=2):
    """The orchard's fixed facts for a seed: camera ids, bud and harvest dates, weather."""
    start, end = _date(start, "start"), _date(end, "end")
    ids = _camera_ids(seed, cameras + test_cameras)
    rng = _rng(seed, "phenology")
    earliest = start + datetime.timedelta(days=DAYS_BEFORE_BUD)
    latest = end - datetime.timedelta(days=DAYS_AFTER_BUD)
    lo = min(2, (latest - earliest).days)
    hi = min((latest - earliest).days, 24)
    bud, harvest = {}, {}
    for cam in ids:
        b = earliest + datetime.timedelta(days=int(rng.integers(lo, hi + 1)))
        last_pick = end - datetime.timedelta(days=WINDOW_DAYS + 1)
        first_pick = b + datetime.timedelta(days=DAYS_AFTER_BUD - WINDOW_DAYS - 1)
        hv = b + datetime.timedelta(days=int(rng.integers(100, 112)))
        bud[cam] = b
        harvest[cam] = min(max(hv, first_pick), last_pick)
    return OrchardConfig(int(seed), tuple(int(s) for s in image_size), start, end, ids[:cameras],
                         ids[cameras:], bud, harvest, _weather_table(seed, start, end))


def generate_orchard(out, cameras=4, presets=(1, 2, 3, 4, 5), times=("09", "12", "15"),
                     start="2021-01-01", end="2021-07-01", image_size=(576, 1024),
                     n_train=60, n_val=20, n_test=40, seed=0, missing_rate=0.03,
                     prior_noise_days=0, overwrite=False, progress=True, workers=1,
                     contact_sheet=None, test_cameras=2, write_archive=True,
                     exists_fix=OVERWRITE_FIX):
    """Generate the synthetic orchard under ``out``; see the module docstring.

    ``test_cameras``: extra trees that only the test split shows. ``write_archive=False``
    writes the labelled set and priors only (the archive is planned, not rendered).
    Returns ``{"root", "archive", "phenology", "voc", "contact_sheet"}`` (paths; the
    contact sheet ``None`` unless asked for) plus ``cameras``, ``test_cameras`` (ids)
    and ``n_archive`` (photos written to the archive).
    """
    presets = [int(p) for p in presets]
    s, e = _date(start, "start"), _date(end, "end")
    hours_txt = _check(cameras, presets, times, s, e, image_size, n_train, n_val, n_test,
                       test_cameras, missing_rate, prior_noise_days, workers)
    hours = [int(t) for t in hours_txt]
    cfg = make_config(int(cameras), s, e, image_size, seed, int(test_cameras) if n_test else 0)
    out = Path(out)
    archive, voc = out / "archive", out / "VOCdevkit" / "VOC2007"

    # Plan everything first, so impossible requests fail before anything is written.
    # Archive: every camera, preset, day and time, less the days a camera was down.
    miss = _rng(seed, "missing")
    dates = [s + datetime.timedelta(days=k) for k in range((e - s).days + 1)]
    tasks, present, missing = [], set(), []
    for cam in cfg.cameras:
        for date in dates:
            if miss.random() < missing_rate:
                missing.append(f"{cam} {date}")
                continue
            for p in presets:
                for hr, txt in zip(hours, hours_txt):
                    present.add((cam, p, date.toordinal(), hr))
                    tasks.append((cam, p, date.toordinal(), hr,
                                  str(archive / cam / f"{p}_{date}_{txt}.jpg"), None))
    n_archive = len(tasks)
    if not write_archive:
        tasks = []
    # Labelled set: train/val are archive photos, test photos come from other trees.
    lrng = _rng(seed, "labelled")
    used = set()
    splits = {name: _pick_labelled(lrng, cfg, cams, presets, hours, n, pool, used)
              for name, cams, n, pool in (("train", cfg.cameras, n_train, present),
                                          ("val", cfg.cameras, n_val, present),
                                          ("test", cfg.test_cameras, n_test, None))}
    lists = {}
    for name, keys in splits.items():
        ids = []
        for cam, p, o, hr in keys:
            img_id = f"{cam}_{p}_{datetime.date.fromordinal(o)}_{hr:02d}"
            ids.append(img_id)
            tasks.append((cam, p, o, hr, str(voc / "JPEGImages" / f"{img_id}.jpg"),
                          str(voc / "SegmentationClass" / f"{img_id}.png")))
        lists[name] = sorted(ids)

    out = _prepare_out(out, contact_sheet, overwrite, exists_fix)
    for cam in cfg.cameras if write_archive else ():
        (archive / cam).mkdir(parents=True, exist_ok=True)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for name, ids in lists.items():
        (voc / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    _run_tasks(tasks, cfg, presets, workers, progress)

    # Priors: the bud dates used, perturbed if asked (imperfect field knowledge).
    noise = _rng(seed, "prior-noise")
    priors = {}
    for cam in cfg.cameras:
        k = int(noise.integers(-prior_noise_days, prior_noise_days + 1)) if prior_noise_days else 0
        priors[cam] = (cfg.bud[cam] + datetime.timedelta(days=k)).isoformat()
    phen_path = out / "phenology.toml"
    write_phenology(phen_path, Phenology(s.isoformat(), e.isoformat(), WINDOW_DAYS, STAGES, priors))

    sheet = None
    if contact_sheet is not None:
        _init_worker(cfg, presets)
        sheet = _contact_sheet(contact_sheet, cfg, presets, hours)
        _STATE.clear()
    manifest = dict(
        seed=seed, image_size=list(cfg.image_size), start=str(s), end=str(e), presets=presets,
        times=hours_txt, cameras={c: dict(bud=str(cfg.bud[c]), prior_bud=priors[c],
                                          harvest=str(cfg.harvest[c])) for c in cfg.cameras},
        test_cameras={c: dict(bud=str(cfg.bud[c]), harvest=str(cfg.harvest[c])) for c in cfg.test_cameras},
        missing_days=missing, n_archive=n_archive if write_archive else 0,
        labelled={k: len(v) for k, v in splits.items()}, classes=NAME_CLASSES,
        stages=[s_.name for s_ in STAGES])
    (out / "orchard.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return {"root": out, "archive": archive, "phenology": phen_path, "voc": out / "VOCdevkit",
            "contact_sheet": sheet, "cameras": list(cfg.cameras),
            "test_cameras": list(cfg.test_cameras), "n_archive": n_archive if write_archive else 0}


def _run_tasks(tasks, cfg, presets, workers, progress):
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="orchard", unit="img", disable=not progress)
    try:
        if workers == 1:
            threads = cv2.getNumThreads()
            _init_worker(cfg, presets, one_thread=True)
            try:
                for t in tasks:
                    _task(t)
                    bar.update()
            finally:
                _STATE.clear()
                cv2.setNumThreads(threads)
        else:
            import multiprocessing as mp

            # Spawned workers: safe even when the caller has TensorFlow threads running.
            with mp.get_context("spawn").Pool(workers, _init_worker, (cfg, presets, True)) as pool:
                # Tasks are grouped by camera, so each worker builds few trees.
                for _ in pool.imap_unordered(_task, tasks, chunksize=16):
                    bar.update()
    finally:
        bar.close()


_PHOTO_SCENES = {}


def render_photo(camera, preset, date, hour, cameras=4, start="2021-01-01", end="2021-07-01",
                 image_size=(576, 1024), seed=0, presets=(1, 2, 3, 4, 5), test_cameras=2):
    """Render one photo and its label map in memory, exactly as :func:`generate_orchard`
    with the same options writes it. Returns (rgb uint8 (H, W, 3), label uint8 (H, W))."""
    cfg = make_config(cameras, start, end, image_size, seed, test_cameras)
    if camera not in cfg.bud:
        raise UserError(f"camera {camera!r} is not in this orchard "
                         f"({', '.join(cfg.cameras + cfg.test_cameras)})")
    day = _date(date, "date")
    if not cfg.start <= day <= cfg.end:
        raise UserError(f"date {day} is outside the season {cfg.start}..{cfg.end}")
    presets = [int(p) for p in presets]
    key = (cfg.seed, camera, cfg.bud[camera], cfg.harvest[camera], tuple(presets),
           cfg.image_size[0] / cfg.image_size[1])
    if key not in _PHOTO_SCENES:
        if len(_PHOTO_SCENES) >= 8:
            _PHOTO_SCENES.clear()
        _PHOTO_SCENES[key] = _build_scene(cfg.seed, camera, cfg.bud[camera].toordinal(),
                                          cfg.harvest[camera].toordinal(), presets, key[-1])
    return render(_PHOTO_SCENES[key], cfg, camera, int(preset), day, int(hour))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out-dir", "--out", dest="out", default="demo_data", type=writable_dir,
                   help="output folder (must be new or empty)")
    p.add_argument("--cameras", type=int, default=4, help="archive cameras, one tree each")
    p.add_argument("--test-cameras", type=int, default=2,
                   help="extra trees seen only by the labelled test split")
    p.add_argument("--presets", type=int, nargs="+", default=[1, 2, 3, 4, 5],
                   help="preset views per camera (original: 1..5; 6 and 7: close-ups of the canopy)")
    p.add_argument("--times", nargs="+", default=["09", "12", "15"],
                   help="hours of the day (original: 09 12 15)")
    p.add_argument("--start", default="2021-01-01", help="first day of the season (original: 2021-01-01)")
    p.add_argument("--end", default="2021-07-01", help="last day of the season (original: 2021-07-01)")
    p.add_argument("--image-size", type=int, nargs=2, default=[576, 1024], metavar=("H", "W"),
                   help="photo size, multiples of 32 (original U-Net input: 576 1024)")
    p.add_argument("--n-train", type=int, default=60, help="labelled training photos")
    p.add_argument("--n-val", type=int, default=20, help="labelled validation photos")
    p.add_argument("--n-test", type=int, default=40, help="labelled test photos (test cameras only)")
    p.add_argument("--missing-rate", type=float, default=0.03,
                   help="probability that a camera lost a whole day")
    p.add_argument("--prior-noise-days", type=int, default=0,
                   help="perturb each bud date in phenology.toml by up to this many days")
    p.add_argument("--contact-sheet", default=None, help="also write this PNG overview")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the generated files in a non-empty --out folder")
    p.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    p.add_argument("--labelled-only", action="store_true",
                   help="write the VOC set and priors but not the camera archive")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # All randomness comes from generators seeded per tree, day and photo from --seed,
    # so no global seeding (and no TensorFlow import) is needed here.
    result = generate_orchard(
        args.out, cameras=args.cameras, presets=tuple(args.presets), times=tuple(args.times),
        start=args.start, end=args.end, image_size=tuple(args.image_size), n_train=args.n_train,
        n_val=args.n_val, n_test=args.n_test, seed=args.seed, missing_rate=args.missing_rate,
        prior_noise_days=args.prior_noise_days, overwrite=args.overwrite,
        progress=not args.no_progress, workers=args.workers, contact_sheet=args.contact_sheet,
        test_cameras=args.test_cameras, write_archive=not args.labelled_only)
    where = (f"{result['n_archive']} archive photos in {result['archive']}" if result["n_archive"]
             else "no archive (--labelled-only)")
    print(f"orchard of cameras {', '.join(result['cameras'])}: {where}; priors "
          f"{result['phenology']}; VOC set {result['voc']}"
          + (f"; contact sheet {result['contact_sheet']}" if result["contact_sheet"] else ""))
    return result


if __name__ == "__main__":
    from utils.errors import run_cli

    run_cli(main)
