"""DDPM pretraining of nnU-Net's planned U-Net on images only.

Ho et al. 2020 (epsilon-prediction loss, Algorithm 1), Nichol & Dhariwal 2021 (cosine schedule), as used by
Alshenoudy et al. 2023 ("Semi-supervised Brain Tumor Segmentation Using Diffusion Models").
"""
import os
from copy import deepcopy
from time import time
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.utilities.file_and_folder_operations import isdir, join, save_json
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.collate_outputs import collate_outputs
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import distributed as dist, nn

from nnunet_ddpm.dataset_conversion.unlabeled_images import unlabeled_preprocessed_folder
from nnunet_ddpm.diffusion import (PREDICTION_TYPES, add_noise, ddim_sample, min_snr_weights, prediction_target,
                                   sample_training_timesteps)
from nnunet_ddpm.networks import (TimeConditionedUNet, build_unet_from_plans, encode_pretraining_metadata,
                                  network_downsampling)
from nnunet_ddpm.training.ddpm_trainer_base import nnUNetTrainerDDPMBase
from nnunet_ddpm.training.images_only_dataset import CombinedImagesDataset, images_only
from nnunet_ddpm.networks.pretrained_checkpoint import denoiser_metadata
from nnunet_ddpm.training.progress import DenoisingProgressLogger, save_sample_grid
from nnunet_ddpm.training.variants.declaration import trainer_variant


SNAPSHOTS_VARIABLE = 'nnUNet_ddpm_pretrain_snapshots'


@trainer_variant()
class nnUNetTrainerDDPMPretrain(nnUNetTrainerDDPMBase):
    """Trains the time-conditioned planned U-Net to predict the noise added to an image (MSE on epsilon, or on v with
    ``prediction_type = 'v_prediction'``).

    Labels are never read: the dataset is opened images-only, foreground oversampling is off, augmentation is
    spatial only. Validation reports the denoising loss; the best checkpoint has the lowest moving average of it.
    ``network_weights`` in the checkpoints are the EMA weights. At the end a grid of DDIM samples is written to
    ``samples.png`` beside ``progress.png``. Run it on fold ``all``.
    """

    is_pretraining = True  # no label budget, no segmentation (training/variants/declaration.py)
    ema_decay = 0.999
    # highest-resolution encoder stages recomputed in the backward pass: the AdamW moments and the EMA copy cost
    # two more copies of the weights than stock nnU-Net's SGD; this pays for them (documentation/performance.md)
    recomputed_encoder_stages = 2
    use_unlabeled_images = True  # add <data_identifier>_unlabeled/ (nnUNetv2_ddpm_preprocess_unlabeled) to training
    num_preview_samples = 8
    min_snr_gamma = None  # a number: the loss of timestep t weighs min(SNR_t, gamma) / SNR_t (min_snr_weights)
    prediction_type = "epsilon"  # or "v_prediction" (prediction_target); recorded in the checkpoint
    pretraining_batch_size = None  # a number: images per step instead of the plans' batch size
    # a number (every axis) or one per axis: the patch the denoiser sees instead of the plans' patch; each axis a
    # multiple of the network's downsampling along it, so that the planned U-Net takes it unchanged
    pretraining_patch_size = None
    preview_sampling_steps = 50
    # iteration counts after which a copy of the checkpoint is kept as checkpoint_iteration<N>.pth, so that one long
    # pretraining gives the fine-tunes of several pretraining lengths (set nnUNet_ddpm_pretrain_snapshots=4000,8000
    # to choose them per run). The learning rate decays over the whole run, so a snapshot is not the end of a shorter
    # run; its EMA weights are what a fine-tune reads.
    snapshot_iterations = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"{type(self).__name__}.prediction_type must be one of {PREDICTION_TYPES}, "
                             f"got {self.prediction_type!r}")
        if self.pretraining_batch_size is not None and \
                (not isinstance(self.pretraining_batch_size, int) or self.pretraining_batch_size < 1):
            raise ValueError(f"{type(self).__name__}.pretraining_batch_size must be a positive integer or None, "
                             f"got {self.pretraining_batch_size!r}")
        super().__init__(plans, configuration, fold, dataset_json, device)
        overrides = {}
        if self.pretraining_batch_size is not None:
            overrides['batch_size'] = self.pretraining_batch_size
        if self.pretraining_patch_size is not None:
            overrides['patch_size'] = self._checked_pretraining_patch_size()
        if overrides:
            # only this trainer's view changes: the plans (which the fine-tunes compare with the checkpoint's) keep
            # the planned batch and patch, and nnU-Net splits the batch over DDP ranks as it would the planned one
            self.configuration_manager = ConfigurationManager({**self.configuration_manager.configuration,
                                                               **overrides})
        self.initial_lr = 2e-4
        self.weight_decay = 0.0
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = 0.0
        # pretraining has no classes: a background-only label manager keeps nnU-Net's data loader away from labels
        # (no ignore-label or region handling, no class locations)
        self.label_manager = self.plans_manager.get_label_manager(
            {k: v for k, v in dataset_json.items() if k != 'regions_class_order'} | {'labels': {'background': 0}})
        self.logger.local_logger = DenoisingProgressLogger()
        self.alphas_cumprod = self.diffusion.training_scheduler().alphas_cumprod
        self.ema_network = None  # -> initialize
        self.ema_updates = 0
        self._reference_images = None

    def _checked_pretraining_patch_size(self) -> List[int]:
        """``pretraining_patch_size`` as one size per axis of the planned patch, refused unless every axis is a positive
        multiple of the planned network's downsampling along it."""
        planned = self.configuration_manager.patch_size
        size = self.pretraining_patch_size
        size = [size] * len(planned) if isinstance(size, int) else list(size) if isinstance(size, (list, tuple)) \
            else [None]
        downsampling = network_downsampling(self.configuration_manager)
        if len(size) != len(planned) or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 or n % d
                                            for n, d in zip(size, downsampling)):
            raise ValueError(f"{type(self).__name__}.pretraining_patch_size must give {len(planned)} positive sizes "
                             f"(or one for every axis), each a multiple of the network's downsampling {downsampling} "
                             f"of the {self.configuration_name} configuration (planned patch {list(planned)}), got "
                             f"{self.pretraining_patch_size!r}")
        return size

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> nn.Module:
        """The noise predictor: one output channel per input channel; no deep supervision."""
        unet = build_unet_from_plans(configuration_manager, num_input_channels, num_input_channels,
                                     deep_supervision=False)
        # Without deep supervision the decoder runs only its last output layer; the others would get no gradient,
        # which DistributedDataParallel (as nnU-Net's -num_gpus wraps it) refuses at the second step. They are never
        # trained in one process either (no gradient, so AdamW skips them); freezing them changes nothing there.
        for layer in unet.decoder.seg_layers[:-1]:
            layer.requires_grad_(False)
        return TimeConditionedUNet(unet, cls.timestep_embedding_dim, cls.recomputed_encoder_stages)

    def initialize(self):
        self.snapshots()  # a bad nnUNet_ddpm_pretrain_snapshots is refused now, not after hours of training
        super().initialize()
        self.dataset_class = images_only(self.dataset_class)
        self.ema_network = deepcopy(self.unwrapped_network()).requires_grad_(False).eval()

    def _build_loss(self):
        return nn.MSELoss()

    def get_tr_and_val_datasets(self):
        """The fold's training images, plus the dataset's preprocessed unlabeled images if there are any.

        The identifiers of both are written to ``pretraining_cases.json`` in the output folder.
        """
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        folder = unlabeled_preprocessed_folder(self.preprocessed_dataset_folder_base,
                                               self.configuration_manager.data_identifier)
        unlabeled = []
        if self.use_unlabeled_images and isdir(folder):
            unlabeled_dataset = self.dataset_class(folder)
            unlabeled = unlabeled_dataset.identifiers
            dataset_tr = CombinedImagesDataset([dataset_tr, unlabeled_dataset])
        self.print_to_log_file(f"DDPM pretraining on {len(dataset_tr.identifiers) - len(unlabeled)} training images "
                               f"and {len(unlabeled)} unlabeled images" + (f" from {folder}" if unlabeled else ""))
        if self.local_rank == 0:
            save_json({"training_images": [i for i in dataset_tr.identifiers if i not in set(unlabeled)],
                       "unlabeled_images": list(unlabeled), "unlabeled_folder": folder if unlabeled else None},
                      join(self.output_folder, "pretraining_cases.json"), sort_keys=False)
        return dataset_tr, dataset_val

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    @staticmethod
    def get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        """Spatial augmentation only: intensity augmentation would teach the DDPM a distorted image distribution."""
        spatial = SpatialTransform(patch_size[1:] if do_dummy_2d_data_aug else patch_size,
                                   patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                                   p_rotation=0.2, rotation=rotation_for_DA, p_scaling=0.2, scaling=(0.85, 1.15),
                                   p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False)
        transforms = [Convert3DTo2DTransform(), spatial, Convert2DTo3DTransform()] if do_dummy_2d_data_aug \
            else [spatial]
        if mirror_axes is not None and len(mirror_axes) > 0:
            transforms.append(MirrorTransform(allowed_axes=mirror_axes))
        return ComposeTransforms(transforms)

    def draw_timesteps_and_noise(self, images: torch.Tensor,
                                 generator: torch.Generator = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Timesteps t ~ U{0, ..., T-1} of shape (B,) and noise eps ~ N(0, I) shaped like ``images``.

        Drawn from ``generator`` if given, else from torch's global generator. A method of its own so that a test can
        prescribe t and eps per sample: ``tests/training/test_ddp_gloo.py`` gives each sample the same draws in one
        process and in two DDP ranks, which hold one half of the batch each, and compares the trained weights.
        """
        timesteps = sample_training_timesteps(images.shape[0], self.diffusion, self.device, generator)
        noise = torch.randn_like(images) if generator is None else \
            torch.randn(images.shape, generator=generator).to(self.device)
        return timesteps, noise

    def denoising_loss(self, images: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
        """E_{t, eps} || eps - eps_theta(sqrt(a_t) x + sqrt(1 - a_t) eps, t) ||^2 for a batch (B, C, *spatial), with
        v in place of eps for v-prediction (``prediction_target``), each sample's mean squared error weighted by
        ``min_snr_weights`` if ``min_snr_gamma`` is set."""
        timesteps, noise = self.draw_timesteps_and_noise(images, generator)
        alpha_bar = self.alphas_cumprod.to(images.device)[timesteps].view(-1, *(1,) * (images.ndim - 1))
        noisy = add_noise(images, noise, alpha_bar)
        with self.autocast():
            prediction = self.network(noisy, timesteps)
        target = prediction_target(images, noise, alpha_bar, self.prediction_type)
        if self.min_snr_gamma is None:
            return F.mse_loss(prediction.float(), target)
        per_sample = (prediction.float() - target).pow(2).flatten(1).mean(1)
        weights = min_snr_weights(alpha_bar.flatten().float(), self.min_snr_gamma, self.prediction_type)
        return (weights * per_sample).mean()

    def train_step(self, batch: dict) -> dict:
        images = batch['data'].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.denoising_loss(images)
        self.backward(loss)
        self.clip_and_step(1.0)
        self.update_ema()
        return {'loss': loss.detach().cpu().numpy()}

    @torch.no_grad()
    def update_ema(self):
        """theta_ema <- d * theta_ema + (1 - d) * theta, with d warmed up as min(decay, (1 + n) / (10 + n))."""
        decay = min(self.ema_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        # one multi-tensor kernel on a GPU, instead of one launch per parameter tensor
        torch._foreach_lerp_(list(self.ema_network.parameters()), list(self.unwrapped_network().parameters()),
                             1 - decay)
        self.ema_updates += 1

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        # the same timesteps and noise every epoch, so validation losses are comparable across epochs
        self._validation_generator = torch.Generator().manual_seed(self.random_seed)

    def validation_step(self, batch: dict) -> dict:
        images = batch['data'].to(self.device, non_blocking=True)
        return {'loss': self.denoising_loss(images, self._validation_generator).cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        loss = np.mean(collate_outputs(val_outputs)['loss'])
        if self.is_ddp:
            losses = [None] * dist.get_world_size()
            dist.all_gather_object(losses, loss)
            loss = float(np.mean(losses))
        previous = self.logger.get_value('ema_val_losses', step=None)
        self.logger.log('val_losses', loss, self.current_epoch)
        self.logger.log('ema_val_losses', loss if not previous else 0.9 * previous[-1] + 0.1 * loss,
                        self.current_epoch)

    def on_epoch_end(self):
        """nnU-Net's epoch end with 'best' meaning the lowest moving-average validation denoising loss."""
        self.logger.log('epoch_end_timestamps', time(), self.current_epoch)
        for key in ('train_losses', 'val_losses', 'ema_val_losses'):
            self.print_to_log_file(key, np.round(self.logger.get_value(key, step=-1), decimals=5))
        epoch_time = self.logger.get_value('epoch_end_timestamps', step=-1) - \
            self.logger.get_value('epoch_start_timestamps', step=-1)
        self.print_to_log_file(f"Epoch time: {np.round(epoch_time, decimals=2)} s")
        if (self.current_epoch + 1) % self.save_every == 0 and self.current_epoch != (self.num_epochs - 1):
            self.save_checkpoint(join(self.output_folder, 'checkpoint_latest.pth'))
        iterations = (self.current_epoch + 1) * self.num_iterations_per_epoch
        if iterations in self.snapshots():
            self.save_checkpoint(join(self.output_folder, f'checkpoint_iteration{iterations}.pth'))
            self.print_to_log_file(
                f"Kept checkpoint_iteration{iterations}.pth. Whether the features still improve with more pretraining: "
                f"nnUNetv2_ddpm_pretraining_readiness -d {self.plans_manager.dataset_name} "
                f"-c {self.configuration_name} -tr {type(self).__name__}")
        ema_val_loss = self.logger.get_value('ema_val_losses', step=-1)
        if self._best_ema is None or ema_val_loss < self._best_ema:
            self._best_ema = ema_val_loss
            self.print_to_log_file(f"New best moving-average validation denoising loss: {np.round(ema_val_loss, 5)}")
            self.save_checkpoint(join(self.output_folder, 'checkpoint_best.pth'))
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self.current_epoch += 1

    def snapshots(self) -> tuple:
        """``snapshot_iterations``, or the comma-separated counts of ``nnUNet_ddpm_pretrain_snapshots``."""
        text = os.environ.get(SNAPSHOTS_VARIABLE)
        if not text:
            return tuple(self.snapshot_iterations)
        counts = [c.strip() for c in text.split(',')]
        if not all(c.isdigit() and int(c) > 0 for c in counts):
            raise SystemExit(f"{SNAPSHOTS_VARIABLE} must be comma-separated positive iteration counts (e.g. "
                             f"4000,8000), got {text!r}")
        return tuple(int(c) for c in counts)

    def extra_checkpoint_entries(self) -> dict:
        """EMA weights go to 'network_weights' (what fine-tuning and -pretrained_weights read)."""
        metadata = denoiser_metadata(self, self.diffusion, self.timestep_embedding_dim, self.ema_decay) | {
            'prediction_type': self.prediction_type, 'batch_size': int(self.configuration_manager.batch_size),
            'pretraining_patch_size': [int(n) for n in self.configuration_manager.patch_size]}
        # the same description inside the weights, for a run that nnU-Net gives them with -pretrained_weights
        self.ema_network.pretraining_metadata.copy_(encode_pretraining_metadata(
            metadata | {'epochs': self.current_epoch + 1, 'trainer_name': self.__class__.__name__}))
        return {
            'network_weights': self.ema_network.state_dict(),
            'training_network_weights': self.unwrapped_network().state_dict(),
            'ema_updates': self.ema_updates,
            'ddpm': metadata,
        }

    def load_checkpoint(self, filename: str) -> None:
        # nnU-Net restores epoch, optimizer and logs (and puts the EMA weights into the network); we then put the raw
        # weights back into the network and the EMA weights into the EMA copy. nnU-Net's loader takes only a file
        # name, hence the second read.
        super().load_checkpoint(filename)
        checkpoint = torch.load(filename, map_location=self.device, weights_only=False)
        self.ema_network.load_state_dict(checkpoint['network_weights'])
        self.unwrapped_network().load_state_dict(checkpoint['training_network_weights'])
        self.ema_updates = checkpoint['ema_updates']

    def on_train_end(self):
        # keep a few real validation patches for the sample grid while the data loaders still run
        self._reference_images = next(self.dataloader_val)['data'][:self.num_preview_samples]
        super().on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        """There is nothing to segment: write the sample grid of the EMA denoiser instead."""
        if self.local_rank != 0:
            return
        patch_size = self.configuration_manager.patch_size
        generator = torch.Generator().manual_seed(self.random_seed)
        samples = ddim_sample(self.ema_network, (self.num_preview_samples, self.num_input_channels, *patch_size),
                              self.diffusion, self.preview_sampling_steps, generator, self.device,
                              self.prediction_type)
        channel_names = [self.dataset_json['channel_names'][k] for k in sorted(self.dataset_json['channel_names'],
                                                                                key=int)]
        path = join(self.output_folder, 'samples.png')
        save_sample_grid(samples, path, channel_names, self._reference_images,
                         title=f'{self.plans_manager.dataset_name} {self.configuration_name}: '
                               f'DDIM, {self.preview_sampling_steps} steps, epoch {self.current_epoch}')
        self.print_to_log_file(f"Wrote {self.num_preview_samples} generated samples to {path}")
