"""One declaration per trainer: everything else about it is derived from that.

``@trainer_variant(method="finetune_t0", title="DDPM fine-tune at timestep 0")`` above a trainer class declares it and
derives:

* ``<Trainer>_demo``: the same trainer with its length taken from the environment (``demo_budget.py``), used by the
  demo, the tests and the real-patient study;
* ``<Trainer>_<N>labels`` and ``<Trainer>_demo_<N>labels`` for every label budget (``label_budget.py``), for
  segmentation trainers (the DDPM pretraining sees every image and never a label);
* with ``method``, the comparison's method of that name and title (``nnunet_ddpm.comparison.methods``).

The derived classes are put beside the declared one in its module, where nnU-Net's trainer search (which looks for a
class of the given name in every module of the trainer folders) finds them; so a user's own variant in their
``nnUNet_extTrainer`` folder works the same way::

    @trainer_variant(method="finetune_t100", title="DDPM fine-tune at timestep 100")
    class nnUNetTrainerDDPMFinetune_t100(nnUNetTrainerDDPMFinetune):
        finetune_timestep = 100
"""
import sys
from typing import Callable, Dict, NamedTuple, Optional

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ddpm.splits.label_budget import LABEL_BUDGETS
from nnunet_ddpm.training.variants.demo_budget import environment_budget_variant
from nnunet_ddpm.training.variants.label_budget import label_budget_variant


class Method(NamedTuple):
    trainer: str  # trainer class name before the budget suffix (``_10labels``) and the ``_demo`` suffix
    title: str
    probes_features: bool = False  # the comparison runs nnUNetv2_ddpm_probe_features before training it


TRAINERS: Dict[str, type] = {}  # every declared and derived trainer by name, in declaration order
METHODS: Dict[str, Method] = {}  # the comparison's methods by name


def declare(trainer: type, method: Optional[str] = None, title: Optional[str] = None, probes_features: bool = False,
            module: Optional[str] = None) -> Dict[str, type]:
    """Declare ``trainer`` (see the module docstring); returns the derived classes by name, the declared one included.
    The derived classes go into ``module`` (default: the trainer's). Declaring the same class again changes nothing;
    another class under a taken method name is refused."""
    if method is not None:
        known = METHODS.get(method)
        if known is not None and known.trainer != trainer.__name__:
            raise ValueError(f"Method {method!r} is already {known.trainer}; give {trainer.__name__} another name.")
        METHODS[method] = Method(trainer.__name__, title or trainer.__name__, probes_features)
    environment_budget = environment_budget_variant(trainer)
    derived = {trainer.__name__: trainer, environment_budget.__name__: environment_budget}
    if not getattr(trainer, "is_pretraining", False):
        for base in (trainer, environment_budget):
            derived.update((v.__name__, v) for v in (label_budget_variant(base, n) for n in LABEL_BUDGETS))
    module = module or trainer.__module__
    home = sys.modules[module]
    for name, cls in derived.items():
        if name != trainer.__name__:
            cls.__module__ = module  # where pickle and nnU-Net's search look for it
        TRAINERS.setdefault(name, cls)
        if not hasattr(home, name):
            setattr(home, name, TRAINERS[name])
    return {name: TRAINERS[name] for name in derived}


def trainer_variant(method: Optional[str] = None, title: Optional[str] = None,
                    probes_features: bool = False) -> Callable[[type], type]:
    """The class decorator form of ``declare``."""
    def decorate(trainer: type) -> type:
        declare(trainer, method, title, probes_features)
        return trainer
    return decorate


# nnU-Net's own trainer, the supervised baseline: its derived variants live here, not in nnU-Net's module
declare(nnUNetTrainer, method="baseline", title="nnU-Net (supervised)", module=__name__)
