"""What the DDPM trainers share: diffusion settings, seeding, checkpoint extras, loading the pretrained denoiser."""
import os
from typing import Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json, save_json
from nnunetv2.paths import nnUNet_results
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunet_ddpm.files import torch_saved_atomically
from nnunet_ddpm.diffusion import DiffusionSettings
from nnunet_ddpm.splits.grouped_folds import check_split_for_training
from nnunet_ddpm.networks.time_conditioned_unet import PRETRAINING_METADATA_KEY, decode_pretraining_metadata
from nnunet_ddpm.networks.pretrained_checkpoint import (PretrainingCheckpointError, check_compatible,
                                                        denoiser_metadata, denoiser_sha256,
                                                        find_pretraining_checkpoint, load_checkpoint_file,
                                                        pretraining_command)
from nnunet_ddpm.training.seeding import Seeded, seed_everything


PRETRAINING_RECORD = 'ddpm_pretraining.json'


class ResumeRefused(SystemExit):
    """A run's own checkpoint (``--c``, ``--val``) cannot be read; the message names the intact ones and the command.
    A SystemExit, so that ``nnUNetv2_train`` ends with the message alone."""


def refuse_unreadable_checkpoint(trainer, filename: str) -> None:
    """Raise ResumeRefused if ``filename`` (a run's own checkpoint) cannot be read by torch.load; return otherwise.

    nnU-Net's ``--c`` takes ``checkpoint_final.pth``, else ``checkpoint_latest.pth``, else ``checkpoint_best.pth``: a
    damaged file (a disk filled up, a copy cut short) hides intact ones behind it. The message names them (with their
    epochs) and the command that resumes from the next one.
    """
    try:
        torch.load(filename, map_location='cpu', weights_only=False)
        return
    except Exception as e:  # truncated zip, pickle garbage, ...: torch raises many types
        problem = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}" if str(e).strip() else type(e).__name__
    folder, name = os.path.split(os.path.abspath(filename))
    intact = []
    for other in ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth"):
        if other != name and isfile(join(folder, other)):
            try:
                epoch = torch.load(join(folder, other), map_location='cpu', weights_only=False).get('current_epoch')
                intact.append(f"{other} (epoch {epoch})")
            except Exception:  # damaged too: not offered
                pass
    plans = trainer.plans_manager.plans_name
    command = (f"nnUNetv2_train {trainer.plans_manager.dataset_name} {trainer.configuration_name} {trainer.fold} "
               f"-tr {trainer.__class__.__name__}" + (f" -p {plans}" if plans != "nnUNetPlans" else "") + " --c")
    if intact:
        advice = (f"Intact: {', '.join(intact)}. Move the damaged file aside and resume from the next one (nnU-Net "
                  f"takes final, then latest, then best): mv {filename} {filename}.damaged && {command}")
    else:
        advice = (f"No intact checkpoint is left in {folder}: move that folder aside and train again without --c.")
    raise ResumeRefused(f"Cannot read the checkpoint {filename} ({problem}); it is truncated or not a PyTorch "
                        f"checkpoint. {advice}")


class CheckedResume:
    """Mixin (before the nnU-Net trainer in the bases): a damaged own checkpoint is refused in one message
    (``refuse_unreadable_checkpoint``) instead of a torch traceback. nnU-Net's loader takes only a file name, so the
    file is examined only when loading it failed."""

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        try:
            super().load_checkpoint(filename_or_checkpoint)
        except Exception:
            if isinstance(filename_or_checkpoint, str):
                refuse_unreadable_checkpoint(self, filename_or_checkpoint)
            raise


class nnUNetTrainerDDPMBase(Seeded, CheckedResume, nnUNetTrainer):
    """Not meant to be trained itself. Subclasses set the class attributes below to change one thing each."""

    diffusion = DiffusionSettings()  # forward process; must equal the pretraining's when fine-tuning
    timestep_embedding_dim = None  # None: 4 x the first stage's features (DDPM convention)
    pretraining_trainer_name = "nnUNetTrainerDDPMPretrain"

    def initialize(self):
        """Seeded (``training/seeding.py``) before the network is built; DDP ranks > 0 then draw their own streams."""
        first_time = not self.was_initialized
        super().initialize()
        if first_time and self.is_ddp and self.local_rank > 0:
            # Every rank was seeded alike, so every rank builds the same network. From here on each rank must draw its
            # own timesteps, noise and (with in-process data loading) batches, or all GPUs would repeat rank 0's draws
            # on their halves of the batch. Rank 0 keeps the stream of a one-process run.
            seed_everything(self.random_seed + self.local_rank)

    def do_split(self):
        """nnU-Net's split, refused (one message, no traceback) if splits_final.json names cases the dataset lacks,
        leaves some out, or puts a patient of ``case_groups.json`` in training and validation."""
        train_cases, val_cases = super().do_split()
        check_split_for_training(self.preprocessed_dataset_folder_base, self.fold,
                                 self.dataset_class.get_identifiers(self.preprocessed_dataset_folder), train_cases,
                                 val_cases, self.__class__.__name__)
        return train_cases, val_cases

    def autocast(self):
        """nnU-Net's mixed precision: float16 autocast on CUDA, nothing elsewhere (``nnUNetTrainer.train_step``)."""
        return autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context()

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of ``loss``, scaled as nnU-Net scales them under float16; may be called several times per step."""
        (self.grad_scaler.scale(loss) if self.grad_scaler is not None else loss).backward()

    def clip_and_step(self, max_grad_norm: float) -> None:
        """The end of ``nnUNetTrainer.train_step``: unscale, clip the gradient norm, optimizer step."""
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), max_grad_norm)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def unwrapped_network(self) -> nn.Module:
        """The network without DDP and torch.compile wrappers (their state-dict keys carry prefixes)."""
        network = self.network.module if isinstance(self.network, DDP) else self.network
        return network._orig_mod if isinstance(network, OptimizedModule) else network

    def extra_checkpoint_entries(self) -> dict:
        """Entries added to nnU-Net's checkpoint dict; subclasses extend this."""
        return {}

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint (same keys, so nnU-Net's loaders and predictor read it) plus our extras."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file('No checkpoint written, checkpointing is disabled')
            return
        checkpoint = {
            'network_weights': self.unwrapped_network().state_dict(),
            'optimizer_state': self.optimizer.state_dict(),
            'grad_scaler_state': self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            'logging': self.logger.get_checkpoint(),
            '_best_ema': self._best_ema,
            'current_epoch': self.current_epoch + 1,
            'init_args': self.my_init_kwargs,
            'trainer_name': self.__class__.__name__,
            'inference_allowed_mirroring_axes': self.inference_allowed_mirroring_axes,
        }
        checkpoint.update(self.extra_checkpoint_entries())
        torch_saved_atomically(checkpoint, filename)


class UsesPretrainedDenoiser(nnUNetTrainerDDPMBase):
    """Base of the segmentation trainers that start from the DDPM pretraining (fine-tune, pixel classifier).

    The denoiser's EMA weights come from the file given to nnU-Net (``nnUNetv2_train -pretrained_weights`` or
    ``run_training(pretrained_weights=...)``), else from the ``pretraining_trainer_name`` run of the same dataset, plans
    and configuration (fold ``all``); either is checked for compatibility before training. A run that nnU-Net resumes
    or validates (``load_checkpoint``) needs neither. Subclasses say what to do with the weights in
    ``apply_pretrained_weights``.

    nnU-Net copies a given file's weights into the network after ``initialize`` and does not tell the trainer which
    file it was. So the trainer learns it from the network: when training starts, weights that differ from those
    ``initialize`` built were put there by nnU-Net; their ``pretraining_metadata`` buffer says what pretraining they
    come from (checked like a file's metadata), and their content hash (``denoiser_sha256``) is the record of which.
    Nothing is read from the process's command line or from nnU-Net's internals, so the Python API behaves as the shell.
    """

    pretraining_source: Optional[dict] = None  # where the starting weights came from (ddpm_pretraining.json)
    starts_from_own_checkpoint = False  # set by load_checkpoint: --c, --val, --val_best
    built_weights_sha256: Optional[str] = None  # the network's weights as initialize built them

    def initialize(self):
        first_time = not self.was_initialized
        super().initialize()
        if first_time:
            self.built_weights_sha256 = denoiser_sha256(self.unwrapped_network().state_dict())

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """This run's own checkpoint holds the (trained) pretrained weights; the record of their source stays."""
        self.starts_from_own_checkpoint = True
        super().load_checkpoint(filename_or_checkpoint)
        record = join(self.output_folder, PRETRAINING_RECORD)
        self.pretraining_source = load_json(record) if isfile(record) else None

    def on_train_start(self):
        """Which pretraining this run starts from is settled here, once nnU-Net's run script has had its say: weights
        it copied in are checked, else the default pretraining is looked for. Refusals come before nnU-Net writes
        anything; the record is written after nnU-Net's own checks (split, label budget) passed."""
        if not self.was_initialized:
            self.initialize()
        if self.pretraining_source is None and not self.starts_from_own_checkpoint:
            weights = self.unwrapped_network().state_dict()
            received = denoiser_sha256(weights)
            self.pretraining_source = self.check_given_weights(weights, received) \
                if received != self.built_weights_sha256 else self.load_pretrained_denoiser(None)
        super().on_train_start()
        if self.local_rank == 0 and self.pretraining_source is not None:
            save_json(self.pretraining_source, join(self.output_folder, PRETRAINING_RECORD))

    def check_given_weights(self, weights: dict, sha256: str) -> dict:
        """Refuse weights that nnU-Net copied in from a pretraining that does not fit this run; returns their record.

        A network without the metadata buffer (nnU-Net's own, in ``nnUNetTrainerDDPMInit``, given weights exported for
        stock trainers) takes the weights as nnU-Net's loader took them, shapes checked."""
        buffers = [v for k, v in weights.items() if k.endswith(PRETRAINING_METADATA_KEY)]
        metadata = decode_pretraining_metadata(buffers[0]) if buffers else None
        described = f"given to nnU-Net (-pretrained_weights; weights sha256 {sha256[:16]})"
        if buffers and metadata is None:
            raise PretrainingCheckpointError(
                f"The weights {described} carry no DDPM pretraining metadata: they are not the network_weights of an "
                f"{self.pretraining_trainer_name} checkpoint. Give that checkpoint's checkpoint_final.pth.")
        if metadata is not None:
            command = pretraining_command(self.plans_manager.dataset_name, self.configuration_name,
                                          self.plans_manager.plans_name, self.pretraining_trainer_name)
            expected = denoiser_metadata(self, self.diffusion, self.timestep_embedding_dim, ema_decay=None)
            check_compatible(metadata, expected, described, command)
        self.prepare_for_given_weights(sha256)
        metadata = metadata or {}
        source = {'checkpoint': None, 'weights_sha256': sha256, 'given_to_nnunet': True,
                  'dataset_name': metadata.get('dataset_name'), 'epochs': metadata.get('epochs'),
                  'use': self.pretrained_weights_use()}
        self.print_to_log_file(f"Initialised from the DDPM pretraining {described}: dataset {source['dataset_name']}, "
                               f"{source['epochs']} epochs, EMA weights; {source['use']}.")
        return source

    def prepare_for_given_weights(self, weights_sha256: str) -> None:
        """Called once nnU-Net's given weights passed the checks, before training: a subclass whose network depends
        on which pretraining it starts from (the pixel classifier's probed features) settles it here."""

    def apply_pretrained_weights(self, weights: dict) -> None:
        """Put the pretrained denoiser's state dict into ``self.network``."""
        raise NotImplementedError

    def pretrained_weights_use(self) -> str:
        """How this trainer uses the pretrained weights, for the log and the record."""
        raise NotImplementedError

    def load_pretrained_denoiser(self, path: Optional[str]) -> dict:
        """Check the pretraining checkpoint ``path`` (None: the default pretraining run's) and load its EMA weights.

        Returns where they came from; ``on_train_start`` writes it to ``ddpm_pretraining.json`` in the output folder,
        so that a resumed run (whose weights come from its own checkpoint) still knows it.
        """
        dataset_name = self.plans_manager.dataset_name
        command = pretraining_command(dataset_name, self.configuration_name, self.plans_manager.plans_name,
                                      self.pretraining_trainer_name)
        path = path or find_pretraining_checkpoint(
            nnUNet_results, dataset_name, self.plans_manager.plans_name, self.configuration_name,
            self.pretraining_trainer_name)
        checkpoint = load_checkpoint_file(path, self.pretraining_trainer_name)
        expected = denoiser_metadata(self, self.diffusion, self.timestep_embedding_dim, ema_decay=None)
        check_compatible(checkpoint['ddpm'], expected, path, command)
        self.apply_pretrained_weights(checkpoint['network_weights'])
        source = {'checkpoint': os.path.abspath(path),
                  'weights_sha256': denoiser_sha256(self.unwrapped_network().state_dict()),
                  'given_to_nnunet': False, 'dataset_name': checkpoint['ddpm']['dataset_name'],
                  'epochs': checkpoint['current_epoch'], 'use': self.pretrained_weights_use()}
        self.print_to_log_file(f"Initialised from the DDPM pretraining checkpoint {path} "
                               f"(dataset {source['dataset_name']}, {source['epochs']} epochs, EMA weights); "
                               f"{source['use']}.")
        return source

    def extra_checkpoint_entries(self) -> dict:
        return {'ddpm_pretraining': self.pretraining_source}
