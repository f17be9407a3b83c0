"""Rates with 95 % Wilson score intervals (with n ≈ 100 prompts a rate is uncertain by about ±0.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    successes: int
    n: int

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    def wilson(self, z: float = 1.959964) -> tuple[float, float]:
        """95 % Wilson score interval for a binomial proportion."""
        if self.n == 0:
            return float("nan"), float("nan")
        p, n = self.value, self.n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def __str__(self) -> str:
        low, high = self.wilson()
        return f"{self.value:.2f} [{low:.2f}, {high:.2f}]"


def repeated_ngram_fraction(tokens: Sequence[int], n: int = 3) -> float:
    """``1 − |distinct n-grams| / |n-grams|`` of a token sequence (0 for fewer than ``n`` tokens): 0 when no
    n-gram repeats, → 1 when a generation loops on one phrase."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0
