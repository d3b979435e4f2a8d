"""Evaluation of a few-shot classifier on the held-out images: the study's metrics,
a per-class report, a confusion-matrix heatmap, PCA and t-SNE plots of embeddings."""
import csv
from pathlib import Path

import numpy as np


def classification_metrics(y_true, y_pred):
    """Accuracy and weighted precision, recall and F1 (scikit-learn; a class never
    predicted counts as precision 0)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted",
                                                 zero_division=0)
    return {"accuracy": float(accuracy_score(y_true, y_pred)), "precision": float(p),
            "recall": float(r), "f1": float(f)}


def nearest_centroid_predict(train_embeddings, train_labels, embeddings):
    """Label of the nearest class centroid (Euclidean) of the training embeddings.
    Embeddings are (N, D); returns (N,) labels."""
    classes = np.unique(train_labels)
    centroids = np.stack([train_embeddings[train_labels == c].mean(0) for c in classes])
    d = ((embeddings[:, None, :] - centroids[None]) ** 2).sum(-1)
    return classes[d.argmin(1)]


def write_report_csv(path, y_true, y_pred, classes):
    """scikit-learn's per-class precision, recall, F1 and support, then the averages."""
    from sklearn.metrics import classification_report

    report = classification_report(y_true, y_pred, labels=list(range(len(classes))),
                                   target_names=list(classes), output_dict=True,
                                   zero_division=0)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1-score", "support"])
        for name, row in report.items():
            if isinstance(row, dict):
                writer.writerow([name] + [f"{row[k]:.4f}" if k != "support" else int(row[k])
                                          for k in ("precision", "recall", "f1-score", "support")])
            else:
                writer.writerow([name, "", "", f"{row:.4f}", len(y_true)])
    return Path(path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path, y_true, y_pred, classes, title):
    """Row-normalised confusion matrix (share of each true class), with the counts."""
    from sklearn.metrics import confusion_matrix

    plt = _pyplot()
    n = len(classes)
    counts = confusion_matrix(y_true, y_pred, labels=list(range(n)))
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = 0.6 * n + 3
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{rows[i, j]:.2f}\n{counts[i, j]}", ha="center", va="center",
                        fontsize=8, color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _scatter(path, points, labels, classes, title):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(points[sel, 0], points[sel, 1], s=12, alpha=0.8, label=classes[c])
    ax.set_title(title)
    if len(classes) <= 20:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_embeddings(prefix, embeddings, labels, classes, what, seed=0, perplexity=30.0):
    """``<prefix>_pca.png`` and ``<prefix>_tsne.png`` of (N, D) embeddings coloured by
    class. Returns the written paths (t-SNE needs at least 4 points)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    labels = np.asarray(labels)
    n_comp = min(2, *embeddings.shape)
    pca = PCA(n_components=n_comp, random_state=seed).fit_transform(embeddings)
    pca = np.pad(pca, ((0, 0), (0, 2 - n_comp)))
    written = [_scatter(f"{prefix}_pca.png", pca, labels, classes,
                        f"PCA of {what} ({len(labels)} held-out images)")]
    if len(labels) >= 4:
        perplexity = float(min(perplexity, len(labels) - 1))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                      method="exact" if len(labels) <= 1000 else "barnes_hut"
                      ).fit_transform(embeddings)
        written.append(_scatter(f"{prefix}_tsne.png", points, labels, classes,
                                f"t-SNE of {what} (perplexity {perplexity:g})"))
    return written
