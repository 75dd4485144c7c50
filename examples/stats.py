"""Small statistics helpers: an example file to try sc2 on."""

import math


def mean(values):
    if not values:
        raise ValueError("mean of an empty list")
    return sum(values) /


def variance(values):
    m = mean(values)
    return sum((v - m) ** 2 for v in values) / len(values)


def stdev(values):
    return math.sqrt(variance(values))
