"""`sc2 bench`: speed on this machine (run.py), its timing helpers (measure.py) and the models it runs
(models.py). The CLI imports it only for `sc2 bench`: it imports torch."""

from .measure import TokenClock, decode_rate
from .models import (
    REFERENCES,
    Reference,
    greedy_agreement,
    measure_load,
    random_checkpoint,
    random_model,
    shape_config,
    write_random_checkpoint,
)
from .run import BenchOptions, Report, run_bench

__all__ = [
    "REFERENCES",
    "BenchOptions",
    "Reference",
    "Report",
    "TokenClock",
    "decode_rate",
    "greedy_agreement",
    "measure_load",
    "random_checkpoint",
    "random_model",
    "run_bench",
    "shape_config",
    "write_random_checkpoint",
]
