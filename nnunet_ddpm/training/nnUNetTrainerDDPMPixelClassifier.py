"""Segmentation by pixel-level MLPs on frozen DDPM activations (Baranchuk et al. 2022, as used by Alshenoudy et al.).

The pretrained denoiser (EMA weights) stays frozen; an ensemble of small MLPs, written as 1x1 convolutions, classifies
every pixel from decoder activations at a few timesteps (``nnunet_ddpm.networks.pixel_classifier``). nnU-Net's patch
sampling, augmentation, Dice + CE loss (per member), validation and sliding-window prediction are used unchanged.
"""
import warnings
from typing import Optional, Tuple

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
from nnunetv2.paths import nnUNet_results
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier
from torch import nn
from torch._dynamo import OptimizedModule

from nnunet_ddpm.features.probe import choice_file, file_digest, indexed_choice_file
from nnunet_ddpm.networks import EnsembleLoss, PixelClassifierNetwork, build_unet_from_plans
from nnunet_ddpm.training.ddpm_trainer_base import UsesPretrainedDenoiser
from nnunet_ddpm.networks.pretrained_checkpoint import transfer_denoiser_weights
from nnunet_ddpm.training.variants.declaration import trainer_variant


PROBED_FEATURES_KEY = "ddpm_pixel_features"  # in the plans' configuration, saved with the model


@trainer_variant(method="pixel_probed", title="DDPM pixel classifier, probed features",
                 probes_features=True)
class nnUNetTrainerDDPMPixelClassifier(UsesPretrainedDenoiser):
    """Trains only the MLP ensemble head; every denoiser parameter keeps its pretrained value.

    Defaults and why:

    * ``feature_stages = None``: the three highest-resolution decoder stages (all of them in a shallower network), i.e.
      (-3, -2, -1). The paper's code and Baranchuk et al. take the later decoder blocks: fine spatial detail plus the
      semantics gathered on the way up.
    * ``feature_timesteps = (50, 150, 250)`` of 1000: small-to-middle noise levels, where Baranchuk et al. found the
      most informative activations; large t mostly sees noise.
    * ``ensemble_size = 5`` MLPs of shape features -> 128 -> 64 -> classes (Baranchuk et al. use 10; 5 halves the
      head's cost; the mean probability of the members is the prediction, their entropy the uncertainty).
    * ``checkpoint_members = True``: the members train one at a time, which keeps the training step's memory near
      stock nnU-Net's (the full-resolution head activations of all members would double it;
      ``documentation/performance.md``): each member's forward and backward pass before the next member's
      (``train_step``), or, under DDP and torch.compile, under activation checkpointing (one more forward pass of
      the head). ``False``: all members at once.
    * ``feature_timesteps_per_pass = None``: all feature timesteps in one denoiser pass for 2D plans (fewer, larger
      launches), one timestep per pass for 3D plans, where a pass over T x B volumes would hold T times the
      activations.
    * Adam at 1e-3 (the optimiser of both papers' MLPs) with nnU-Net's poly schedule, for 100 epochs: only the small
      head learns, on fixed features, and it needs far fewer steps than a whole U-Net.
    """

    feature_stages: Optional[Tuple[int, ...]] = None  # decoder stages, 0 = lowest resolution, -1 = full resolution
    feature_timesteps: Tuple[int, ...] = (50, 150, 250)
    ensemble_size = 5
    mlp_hidden: Tuple[int, ...] = (128, 64)
    checkpoint_members = True
    feature_timesteps_per_pass: Optional[int] = None  # None: all at once in 2D, one at a time in 3D
    noise_seed = 0  # seeds the noise that brings inputs to the feature timesteps: deterministic features
    use_probed_features = True  # stages and timesteps from nnUNetv2_ddpm_probe_features, where it has run

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False  # the head predicts at full resolution only
        self.initial_lr = 1e-3
        self.weight_decay = 0.0
        self.num_epochs = 100
        self.probed_features = self._adopt_probed_features() if self.use_probed_features else None

    def _adopt_probed_features(self) -> Optional[dict]:
        """The choice of ``nnUNetv2_ddpm_probe_features`` beside the dataset's pretraining, if there is one (for a
        ``_<N>labels`` variant the choice made on its N cases, else the general one). A run that nnU-Net gives other
        weights replaces it when training starts (``prepare_for_given_weights``)."""
        if not nnUNet_results.is_set():
            return None
        folder = join(str(nnUNet_results), self.plans_manager.dataset_name, convert_trainer_plans_config_to_identifier(
            self.pretraining_trainer_name, self.plans_manager.plans_name, self.configuration_name), "fold_all")
        return self._adopt_choice(self._choice_in(lambda budget: join(folder, choice_file(budget))))

    def _choice_in(self, path_for_budget) -> Optional[str]:
        """The choice file for this trainer's label budget (else the general one) among ``path_for_budget(budget)``."""
        budget = getattr(self, "num_labelled_cases", None)  # the _<N>labels variants: the choice made on their cases
        candidates = [path_for_budget(b) for b in ((budget, None) if budget else (None,))]
        return next((f for f in candidates if isfile(f)), None)

    def _adopt_choice(self, path: Optional[str]) -> Optional[dict]:
        """Build the network with the choice in ``path`` (None: the class's stages and timesteps), written into the
        plans: ``build_network_architecture`` reads it from there, and nnU-Net saves these plans with the model, so that
        ``nnUNetv2_predict`` builds the same network. A model folder whose plans hold another choice (another fold
        trained before a new probe) is refused: its models would no longer load."""
        configuration = self.plans_manager.plans["configurations"][self.configuration_name]
        if path is None:
            configuration.pop(PROBED_FEATURES_KEY, None)
            self.configuration_manager.configuration.pop(PROBED_FEATURES_KEY, None)
            self.feature_stages = type(self).feature_stages
            self.feature_timesteps = type(self).feature_timesteps
            return None
        record = load_json(path)
        choice = {"stages": record["stages"], "timesteps": record["timesteps"], "file": path,
                  "checkpoint_sha1": record["checkpoint_sha1"], "weights_sha256": record.get("weights_sha256")}
        saved_plans = join(self.output_folder_base, "plans.json")
        if isfile(saved_plans):
            saved = load_json(saved_plans)["configurations"][self.configuration_name].get(PROBED_FEATURES_KEY)
            if saved is not None and (saved["stages"], saved["timesteps"]) != (choice["stages"], choice["timesteps"]):
                raise RuntimeError(
                    f"{self.output_folder_base} holds models with decoder stages {saved['stages']} and timesteps "
                    f"{saved['timesteps']}, but {choice['file']} now chooses {choice['stages']} and "
                    f"{choice['timesteps']}. Train into another results folder, or delete that model folder.")
        configuration[PROBED_FEATURES_KEY] = choice
        self.configuration_manager.configuration[PROBED_FEATURES_KEY] = choice
        # what the network is built with, so that debug.json and the reports say so
        self.feature_stages, self.feature_timesteps = tuple(choice["stages"]), tuple(choice["timesteps"])
        return choice

    def prepare_for_given_weights(self, weights_sha256: str) -> None:
        """The probe's choice for the weights nnU-Net gave (filed by their content hash), else the built-in stages and
        timesteps: a choice made for another pretraining is not used. The network is built again if that changes it;
        the given denoiser weights go into the new one."""
        if not self.use_probed_features:
            return
        path = self._choice_in(lambda budget: indexed_choice_file(
            str(nnUNet_results), self.plans_manager.dataset_name, weights_sha256, budget)) \
            if nnUNet_results.is_set() else None
        before = self.probed_features
        if before is not None and path is None:
            self.print_to_log_file(f"The feature choice {before['file']} was made for other weights than the ones "
                                   f"given to nnU-Net; using the built-in decoder stages and timesteps instead "
                                   f"(run nnUNetv2_ddpm_probe_features -pretrained_weights for them).")
        self.probed_features = self._adopt_choice(path)
        unchanged = (before is None and path is None) or (before is not None and path is not None and (
            before["stages"], before["timesteps"]) == (self.probed_features["stages"],
                                                       self.probed_features["timesteps"]))
        if not unchanged:
            denoiser = {k: v.clone() for k, v in self.unwrapped_network().state_dict().items()
                        if '.seg_layers.' not in k}
            self.was_initialized = False  # nnU-Net's initialize builds network, optimizer and loss once
            self.initialize()
            self.apply_pretrained_weights(denoiser)

    def check_given_weights(self, weights: dict, sha256: str) -> dict:
        return super().check_given_weights(weights, sha256) | {'pixel_features': self._features_used()}

    def _features_used(self) -> dict:
        """The decoder stages (counted from the end) and timesteps of the network, and the choice file they come
        from (None: the class's built-in ones)."""
        network = self.unwrapped_network()
        return {'stages': self._stages_from_end(network), 'timesteps': list(network.timesteps),
                'file': self.probed_features['file'] if self.probed_features else None}

    @staticmethod
    def _stages_from_end(network) -> list:
        """One numbering of decoder stages in files, messages and logs: -1 = full resolution (the probe's)."""
        return [s - len(network.unet.decoder.stages) for s in network.stages]

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        # the denoiser exactly as pretrained (one output per input channel); the head replaces its output layers
        unet = build_unet_from_plans(configuration_manager, num_input_channels, num_input_channels,
                                     deep_supervision=False)
        probed = configuration_manager.configuration.get(PROBED_FEATURES_KEY) if cls.use_probed_features else None
        timesteps = tuple(probed["timesteps"]) if probed else cls.feature_timesteps
        alpha_bars = [cls.diffusion.alpha_bar(t) for t in timesteps]
        stages = tuple(probed["stages"]) if probed else \
            cls.feature_stages or tuple(range(-min(3, len(unet.decoder.stages)), 0))
        per_pass = cls.feature_timesteps_per_pass or (None if len(configuration_manager.patch_size) == 2 else 1)
        return PixelClassifierNetwork(unet, stages, timesteps, alpha_bars, num_output_channels,
                                      cls.ensemble_size, cls.mlp_hidden, cls.noise_seed, cls.timestep_embedding_dim,
                                      cls.checkpoint_members, per_pass)

    def initialize(self):
        super().initialize()
        self.unwrapped_network().region_based = self.label_manager.has_regions

    def load_pretrained_denoiser(self, *args):
        """The base's loading, then a warning when the probed feature choice was made for another checkpoint."""
        source = super().load_pretrained_denoiser(*args) | {'pixel_features': self._features_used()}
        if self.probed_features and source and file_digest(source["checkpoint"]) != \
                self.probed_features["checkpoint_sha1"]:
            message = (f"The feature choice {self.probed_features['file']} was made for another pretraining "
                       f"checkpoint than {source['checkpoint']}; run nnUNetv2_ddpm_probe_features again for it.")
            warnings.warn(message)
            self.print_to_log_file("WARNING: " + message)
        return source

    def apply_pretrained_weights(self, weights: dict) -> None:
        transfer_denoiser_weights(self.unwrapped_network(), weights)  # every key but the head's (.seg_layers.)

    def pretrained_weights_use(self) -> str:
        network = self.unwrapped_network()
        return (f"frozen; features of decoder stages {self._stages_from_end(network)} (counted from the end, -1 = "
                f"full resolution) at timesteps {network.timesteps} "
                f"({network.timesteps_per_pass} per denoiser pass), ensemble of {self.ensemble_size} MLPs")

    def _build_loss(self):
        return EnsembleLoss(super()._build_loss())

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's step, with each member's loss backpropagated before the next member runs.

        The gradient is that of nnU-Net's step (of the mean of the members' losses), and only one member's
        activations exist at a time, as with ``checkpoint_members``, but none is recomputed: the checkpointed head
        runs every member's forward pass twice, a quarter of the step on the CPU (``documentation/performance.md``).
        Under DDP (a gradient all-reduce per backward pass) or torch.compile (whose graph is the whole network), and
        with ``checkpoint_members = False`` (all members at once), nnU-Net's own step runs.
        """
        network = self.network
        if self.is_ddp or isinstance(network, OptimizedModule) or not network.head.checkpoint_members:
            return super().train_step(batch)
        data = batch['data'].to(self.device, non_blocking=True)
        target = batch['target'].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            features = network.features(data)  # the frozen denoiser, without gradients
        head, total = network.head, 0.0
        head.count_batch()
        for k in range(head.ensemble_size):
            with self.autocast():
                loss = self.loss.loss(head.member(k, features, data.shape[2:]), target) / head.ensemble_size
            self.backward(loss)
            total += loss.detach()
        self.clip_and_step(12)  # nnU-Net's gradient clipping
        return {'loss': total.cpu().numpy()}

    def configure_optimizers(self):
        head = self.unwrapped_network().head.parameters()
        optimizer = torch.optim.Adam(head, lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def set_deep_supervision_enabled(self, enabled: bool):
        """Nothing to switch: the head has no deep supervision and the frozen decoder's heads are never run."""
