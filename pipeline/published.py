"""The published PDE results (PDE repository README, cherry time-series data).

Kept here as data so the pipeline and the paper-table benchmark print them beside a
user's own numbers. Keys are the benchmark's row names. ``None`` = not reported.
"""

COLUMNS = ("Pretraining", "Pretraining data", "Frozen mIoU", "Frozen mPA",
           "Fine-tuned mIoU", "Fine-tuned mPA")

# row key -> (label, pretraining data, frozen mIoU, frozen mPA, fine-tuned mIoU, fine-tuned mPA)
PUBLISHED = {
    "random": ("Glorot uniform (random)", "none", 0.2309, 0.3183, 0.2652, 0.3758),
    "scratch": ("Glorot uniform, from scratch", "none", None, None, 0.2719, 0.3666),
    "simclr": ("SimCLR", "7,373 cherry images", 0.0733, 0.2, 0.2678, 0.382),
    "moco": ("MoCo", "7,373 cherry images", "did not converge", None, None, None),
    "simsiam": ("SimSiam", "7,373 cherry images", 0.2252, 0.3146, 0.2609, 0.347),
    "imagenet": ("ImageNet", "> 10 million images", 0.2969, 0.4158, 0.5412, 0.716),
    "supervised": ("Supervised phenological classification", "3,100 cherry images",
                   0.343, 0.4502, 0.3883, 0.498),
    "pde_class": ("PDE (classification distance)", "600,000 pairs from 3,100 images",
                  0.5502, 0.7123, 0.5751, 0.7355),
    "pde_grading": ("PDE (grading distance)", "not in the published table",
                    None, None, None, None),
}


def row_label(key):
    """The table's name of a row: the published label, or the registry name of a
    method the paper did not report."""
    return PUBLISHED[key][0] if key in PUBLISHED else key


def fmt(value):
    """A table cell: 4 decimals for numbers, a dash for missing values."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:.4f}"


def markdown_table(rows):
    """``rows``: sequences of six cells (already formatted or raw); returns Markdown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return "\n".join(lines)
