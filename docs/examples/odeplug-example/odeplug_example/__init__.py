"""odeplug-example: one noun of each kind, each with the methods that make it work.

The entry point ``odeplug_example = "odeplug_example:register"`` names :func:`register`;
``odeplug check odeplug_example`` checks every noun it exports, with the instances
:func:`odeplug_examples` offers besides the defaults.
"""

from . import _norm, _quadrature, _rule, _solver, _wiener
from ._norm import WeightedRMSNorm
from ._quadrature import ClenshawCurtis
from ._rule import CheckpointedAdjoint
from ._solver import Fehlberg45
from ._wiener import FourierSine, FourierSinePath

__all__ = [
    "CheckpointedAdjoint", "ClenshawCurtis", "Fehlberg45", "FourierSine", "FourierSinePath",
    "WeightedRMSNorm", "odeplug_examples", "register",
]


def register():
    """The plugin's hook: each file's methods, and its names on ``odeplug``."""
    for part in (_norm, _quadrature, _solver, _wiener, _rule):
        part.register()


def odeplug_examples():
    """Instances for ``odeplug check`` besides their classes' defaults: the rule resetting at
    every step, and a tighter solver; the norm at both ends of its weight."""
    return [
        CheckpointedAdjoint(), CheckpointedAdjoint(every=1),
        Fehlberg45(), Fehlberg45(rtol=1e-9, atol=1e-9, norm=WeightedRMSNorm()),
        WeightedRMSNorm(), WeightedRMSNorm(integral_weight=0.0),
        WeightedRMSNorm(integral_weight=1.0),
    ]
