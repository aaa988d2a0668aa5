"""The base optimizers the rotation engine can wrap, beyond ``torch.optim`` (docs/CONVENTIONS.md
§5): one optimizer per file, its algorithm in the class docstring. Every class is a plain
``torch.optim.Optimizer`` whose update depends on the parameters only through weight decay;
:mod:`.weight_decay` says how that decay composes with a rotation. :func:`traits` is the one place
the rest of the project asks what an optimizer needs. Class paths such as
``rotations.zoo.Signum`` (used in configs) are re-exported here.
"""
from .adam_one_beta import AdamOneBeta
from .clipped_sgd import ClippedSGD
from .muon import NS_DTYPES, Float32Muon, MuonAdamW, newton_schulz_fp32
from .signsgd import SignSGD
from .signum import Signum
from .traits import OptimizerTraits, requires_closure, traits
from .weight_decay import (DECOUPLED_WEIGHT_DECAY, WEIGHT_DECAY_MODES, is_decoupled,
                           weight_decay_mode)

__all__ = [
    "SignSGD", "Signum", "AdamOneBeta", "ClippedSGD", "MuonAdamW", "Float32Muon",
    "newton_schulz_fp32", "NS_DTYPES", "is_decoupled", "weight_decay_mode",
    "DECOUPLED_WEIGHT_DECAY", "WEIGHT_DECAY_MODES", "OptimizerTraits", "traits",
    "requires_closure",
]
