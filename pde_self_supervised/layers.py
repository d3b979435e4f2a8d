"""The Siamese distance layers, kept importable from their first home (see nets.distances)."""
from nets.distances import DISTANCES, CosineDistance, EuclideanDistance, SquaredDifference  # noqa: F401
