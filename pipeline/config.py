"""One typed, layered configuration for every job.

Layers, later wins:
  1. the dataclass defaults below (``conf/defaults.yaml`` is their dump, kept in sync by a test);
  2. YAML files given with ``--config`` (a file may ``extends:`` others, resolved relative to itself);
  3. the job's own flags (``--imbalance-ratio 10`` is sugar for ``--set longtail.imbalance_ratio=10``)
     and ``--set key=value``, in command-line order.

Every value is checked against its declared type; an unknown key or a wrong type raises
``ConfigError`` naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from pipeline import fs
from pipeline.errors import PipelineError
from pipeline.records import Manifest


class ConfigError(PipelineError, ValueError):
    """A configuration problem; the message names the key (and the file) at fault."""


@dataclass
class SparkConfig:
    master: Optional[str] = None  # None: spark-submit's --master if given, else local[*]
    app_name: str = "longtail-lab"
    shuffle_partitions: int = 8  # spark.sql.shuffle.partitions: small tables, few cores
    driver_memory: str = "4g"  # used only when the job starts the JVM itself (not under spark-submit)
    conf: dict[str, str] = field(default_factory=dict)  # extra spark.* settings
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"  # Spark's console log level (--verbose: INFO)

    def validate(self) -> None:
        if self.shuffle_partitions < 1:
            raise ConfigError(f"spark.shuffle_partitions must be >= 1, got {self.shuffle_partitions}")


@dataclass
class IngestConfig:
    dataset: str = "digits"  # a registered source: digits, cifar10, cifar100, svhn, imagefolder, manifest
    source: list[str] = field(default_factory=list)  # input paths/URIs; empty: bundled data or download
    out: Optional[str] = None  # output directory (path or URI)
    overwrite: bool = False  # replace an existing output atomically instead of refusing
    image_size: Optional[list[int]] = None  # [height, width] every image must have (pixels)
    channels: Optional[int] = None  # channels every image must have (1 grey, 3 RGB, 4 RGBA)
    split: Optional[str] = None  # manifest: split of its rows (default: from the file name, else train)
    root: Optional[str] = None  # manifest: base of relative paths (default: the manifest's folder)
    label_type: Literal["index", "name"] = "index"  # manifest: labels are class indices or names
    num_classes: Optional[int] = None  # manifest, index labels: classes 0..num_classes-1 (None: 0..largest label)
    test_fraction: float = 0.25  # digits: share of each class held out as the test split
    seed: int = 0  # digits: seed of that held-out split
    download_dir: str = "data/downloads"  # where torchvision downloads go when --source is absent
    files_per_task: int = 2000  # input files per Spark task
    max_record_mb: float = 64.0  # an input record (image file, archive member) larger than this is rejected, unread
    # What training on this data set needs (``train`` keys, e.g. {batch_size: 32, data: {augment: none}}), set
    # by the data set's config (conf/datasets/): recorded with the data, every training on its splits starts
    # from it (above the defaults, below the run's own config files and flags)
    train_settings: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.image_size is not None:
            if len(self.image_size) == 1:  # --image-size 32 means 32x32
                self.image_size = self.image_size * 2
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ConfigError(f"ingest.image_size must be [height, width] in pixels, got {self.image_size}")
        if not 0 <= self.test_fraction < 1:
            raise ConfigError(f"ingest.test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.files_per_task < 1:
            raise ConfigError(f"ingest.files_per_task must be >= 1, got {self.files_per_task}")
        if not self.max_record_mb > 0:
            raise ConfigError(f"ingest.max_record_mb must be > 0, got {self.max_record_mb}")
        if self.seed < 0:
            raise ConfigError(f"ingest.seed must be >= 0 (numpy's seeds are), got {self.seed}")
        apply_mapping(TrainConfig(), self.train_settings, "ingest.train_settings.")  # known train keys, right types


@dataclass
class LongTailConfig:
    data: Optional[str] = None  # an ingest output directory
    out: Optional[str] = None  # the splits directory to write
    overwrite: bool = False
    imbalance_ratio: float = 100.0  # rho = n_max / n_min of the labeled split
    imbalance_type: Literal["exp", "step", "none"] = "exp"
    labeled_max: Optional[int] = None  # n_max (images of the head class); None: smallest class available
    # A split list: a text file of the labeled split's ids, one "ID [CLASS]" per line (a published
    # list such as ImageNet-LT's, or another code's draw). The labeled set is exactly those images and
    # imbalance_ratio / imbalance_type / labeled_max do not apply; val and the pool come from the rest.
    labeled_ids: Optional[str] = None
    unlabeled_max: Optional[int] = None  # M1, head of the unlabeled pool; None: every image left over
    unlabeled_ratio: float = 1.0  # rho_U of the pool; 1 uniform, negative reverses the class order
    val_per_class: int = 0  # images per class for a validation split, from what neither took
    seed: int = 0
    # How a class's images are shuffled: "generator" numpy.random.default_rng(seed); "imbalance_cifar"
    # the legacy RandomState(seed) that LDAM-DRW's and Yang & Xu's IMBALANCECIFAR10/100 draw with (one
    # state, classes in order, the first n_c of each shuffled class). Ids are shuffled in sorted order,
    # which for a CIFAR batches ingest is the batch order: there it keeps the reference code's images.
    draw: Literal["generator", "imbalance_cifar"] = "generator"
    source_split: str = "train"  # ingest split the labeled/unlabeled/val splits are carved from
    test_split: str = "test"  # ingest split copied untouched to SPLITS/test ("" for none)
    files_per_split: int = 0  # Parquet files per split (shards for readers); 0: Spark's default parallelism

    def validate(self) -> None:
        if self.imbalance_ratio < 1:
            raise ConfigError(f"longtail.imbalance_ratio must be >= 1, got {self.imbalance_ratio}")
        if self.seed < 0:
            raise ConfigError(f"longtail.seed must be >= 0 (numpy's seeds are), got {self.seed}")
        if self.unlabeled_ratio == 0 or abs(self.unlabeled_ratio) < 1:
            raise ConfigError(
                f"longtail.unlabeled_ratio must be >= 1 or <= -1 (negative reverses), got {self.unlabeled_ratio}")
        for key in ("labeled_max", "unlabeled_max", "val_per_class", "files_per_split"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"longtail.{key} must be >= 0, got {value}")
        if self.labeled_ids is not None and self.labeled_max is not None:
            raise ConfigError("longtail.labeled_ids gives the labeled split itself: drop longtail.labeled_max")


@dataclass
class OptimConfig:
    """train.optim: SGD with momentum (the reference protocol)."""
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4


@dataclass
class ScheduleConfig:
    """train.schedule: epoch numbers written for ``reference_epochs``, scaled to the run's ``train.epochs``."""
    reference_epochs: int = 200
    warmup_epochs: int = 5  # linear warm-up from lr/warmup to lr
    lr_milestones: list[int] = field(default_factory=lambda: [160, 180])
    lr_factors: list[float] = field(default_factory=lambda: [0.01, 0.0001])  # lr x factor from each milestone
    drw_epoch: int = 160  # class weights with weights_schedule=drw start here


@dataclass
class LossConfig:
    """train.loss: the registered loss and its parameters (``--set train.loss=focal`` sets the name)."""
    name: str = "ce"  # a registered loss
    class_weights: str = "none"  # a registered per-class weighting: none, inverse, effective_number
    weights_schedule: Literal["always", "drw"] = "always"  # drw: weights only from schedule.drw_epoch on
    # how class weights reduce over a batch (softmax losses): sum w_y ce / sum w_y (LDAM-DRW's
    # F.cross_entropy(weight=w)) or sum w_y ce / N (Cui et al.'s TensorFlow code)
    weighted_reduction: Literal["weighted_mean", "mean"] = "weighted_mean"
    cb_beta: float = 0.9999  # effective number beta (Cui et al.) of class_weights=effective_number
    focal_gamma: float = 1.0
    ldam_max_m: float = 0.5  # largest LDAM margin (of the rarest class)
    ldam_s: float = 30.0  # s: the cosine head's logit scale, and the scale of LDAM's margins
    logit_tau: float = 1.0  # logit adjustment strength (Menon et al.)
    posthoc_tau: float = 0.0  # > 0: subtract tau * log prior from the logits at evaluation


@dataclass
class SamplerConfig:
    """train.sampler: which examples an epoch visits (``--set train.sampler=class_balanced`` sets the name)."""
    name: str = "random"  # a registered sampler: random, class_balanced
    weights: str = "inverse"  # class_balanced: the class weighting examples are drawn by
    cb_beta: float = 0.9999  # weights=effective_number: its beta


@dataclass
class DataConfig:
    """train.data: how the training images are held, augmented and normalised."""
    augment: Literal["crop_flip", "crop", "flip", "none"] = "crop_flip"  # digits: no flips (a flipped 2 is no 2)
    crop_padding: int = 4  # pixels of black border around the raw image before the random crop
    norm_mean: Optional[list[float]] = None  # per-channel mean in [0, 1] units; None: measured on the labeled split
    norm_std: Optional[list[float]] = None  # per-channel std; set together with norm_mean
    loader: Literal["auto", "memory", "petastorm"] = "auto"
    memory_limit_mb: int = 4096  # auto: decoded splits up to this size are held in memory
    eval_batch_size: int = 0  # images per evaluation forward pass; 0: 128 on a CPU, 512 on a GPU (pipeline.accel)


@dataclass
class SSPConfig:
    """train.ssp: rotation pre-training (train.objective=rotation)."""
    unlabeled: bool = False  # also learn from the unlabeled pool's images
    # one random rotation per image, balanced within each batch (Yang & Xu's pretrain_rot.py), or all
    # four rotations of every image (4 x batch images per step)
    rotations: Literal["random", "all"] = "random"


@dataclass
class AutoencoderConfig:
    """train.ae: how autoencoder models (unet_ae, mobilenetv2_ae) train."""
    mode: Literal["classify", "joint", "separate"] = "classify"
    recon_weight: float = 1.0  # joint: loss = classification + recon_weight * reconstruction MSE
    epochs: int = 10  # separate: reconstruction epochs before the classifier epochs (frozen encoder)


@dataclass
class SemiConfig:
    """train.semi: semi-supervised training on pseudo-labels (jobs/train_semi.py)."""
    pseudo_labels: Optional[str] = None  # a jobs/pseudolabel.py output directory
    # labeled and pseudo-labeled images shuffled together, one loss over the batch, an epoch one pass
    # over both (Yang & Xu's train_semi.py), or a fixed share of pseudo-labeled images per batch
    batches: Literal["union", "fixed_share"] = "union"
    unlabeled_share: float = 0.5  # fixed_share: share of each batch drawn from the pseudo-labeled images
    unlabeled_weight: float = 1.0  # fixed_share: loss = labeled loss + unlabeled_weight * pseudo-labeled loss
    rounds: int = 1  # > 1 re-labels the pool with each round's model and trains again
    # variants of ours: the pseudo-labeled rows' loss, the recipe's (same) or CE(f + tau * log prior)
    # (logit_adjusted), and their augmentation, the recipe's (same) or RandAugment + Cutout
    loss: Literal["same", "logit_adjusted"] = "same"
    tau: float = 1.0
    augment: Literal["same", "randaugment"] = "same"
    randaugment_ops: int = 2  # augment=randaugment: operations per image
    randaugment_magnitude: int = 9  # ... their strength, 0..30 (torchvision's bins)
    cutout: int = 16  # ... then a square of this many pixels cut out (0: none)


@dataclass
class RuntimeConfig:
    """train.runtime: where and how the step runs; none of it changes what a run computes but the
    precision (pipeline.accel)."""
    num_processes: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 autocast and channels-last on CUDA, fp32 NCHW on the CPU
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto", "on", "off"] = "auto"
    compile: bool = False  # torch.compile the training step's model
    run_dir: str = "runs/train"  # checkpoints and local artifacts; a folder per run
    resume: bool = False


@dataclass
class TrackingConfig:
    """train.tracking: the MLflow run."""
    experiment: str = "longtail-lab"
    tags: dict[str, str] = field(default_factory=dict)  # extra MLflow tags of the run (a sweep names itself here)
    register: Optional[str] = None  # register the run's model as a new version of this registered model
    register_alias: Optional[str] = "candidate"  # ...and point this alias at the version
    system_metrics: bool = True  # MLflow system metrics (CPU, memory, GPU) sampled into the run


@dataclass
class TrainConfig:
    """Defaults follow the reference protocol of Cao et al. (LDAM-DRW) on CIFAR-LT. What the run is
    sits at the top; each part's settings are a section (train.optim, train.loss, ...) that part
    receives alone."""
    splits: Optional[str] = None  # a jobs/longtail.py output directory
    method: Optional[str] = None  # the recipe (conf/methods/<name>.yaml) these settings came from
    reference: Optional[str] = None  # the paper and public code the recipe reproduces (set by the recipe)
    model: str = "resnet32"  # a registered model
    head: Literal["linear", "normed"] = "linear"  # normed: cosine classifier (LDAM), scale train.loss.ldam_s
    weights_path: Optional[str] = None  # torchvision models: initial weights from a local file
    objective: Literal["classify", "rotation"] = "classify"  # rotation: self-supervised pre-training (SSP)
    pretrained: Optional[str] = None  # an MLflow run id or a checkpoint path (SSP)
    epochs: int = 200
    # evaluate on the test (and val) split after every k-th epoch, and always after the last: on a CPU an
    # evaluation of CIFAR's 10,000 test images is ~15% of a ResNet-32 epoch on 12,406 images
    eval_every: int = 1
    batch_size: int = 128  # per step, over all processes
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ssp: SSPConfig = field(default_factory=SSPConfig)
    ae: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self) -> None:
        s, semi, d = self.schedule, self.semi, self.data
        if len(s.lr_milestones) != len(s.lr_factors):
            raise ConfigError("train.schedule.lr_milestones and train.schedule.lr_factors must have the same length")
        for key, value in (("epochs", self.epochs), ("eval_every", self.eval_every), ("batch_size", self.batch_size),
                           ("runtime.num_processes", self.runtime.num_processes),
                           ("schedule.reference_epochs", s.reference_epochs), ("semi.rounds", semi.rounds)):
            if value < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {value}")
        if self.seed < 0:
            raise ConfigError(f"train.seed must be >= 0 (numpy's seeds are), got {self.seed}")
        if d.eval_batch_size < 0:
            raise ConfigError(f"train.data.eval_batch_size must be >= 0 (0: the device's default), got {d.eval_batch_size}")
        for key, beta in (("loss.cb_beta", self.loss.cb_beta), ("sampler.cb_beta", self.sampler.cb_beta)):
            if not 0 <= beta < 1:
                raise ConfigError(f"train.{key} must be in [0, 1), got {beta}")
        if not 0 < semi.unlabeled_share < 1:
            raise ConfigError(f"train.semi.unlabeled_share must be in (0, 1), got {semi.unlabeled_share}")
        if semi.unlabeled_weight < 0:
            raise ConfigError(f"train.semi.unlabeled_weight must be >= 0, got {semi.unlabeled_weight}")
        if (d.norm_mean is None) != (d.norm_std is None):
            raise ConfigError("train.data.norm_mean and train.data.norm_std must be set together (or neither: measured)")
        if d.norm_std is not None and (len(d.norm_std) != len(d.norm_mean) or min(d.norm_std) <= 0):
            raise ConfigError(f"train.data.norm_std must be positive, one per channel of train.data.norm_mean, "
                              f"got {d.norm_std}")
        semi_only = {k: getattr(semi, k) for k in ("loss", "augment") if getattr(semi, k) != "same"}
        if semi_only and not semi.pseudo_labels:
            raise ConfigError(f"{', '.join(f'train.semi.{k}={v}' for k, v in semi_only.items())} applies to "
                              f"pseudo-labeled images: set train.semi.pseudo_labels (a jobs/pseudolabel.py output)")
        if not 0 <= semi.randaugment_magnitude <= 30 or semi.randaugment_ops < 1 or semi.cutout < 0:
            raise ConfigError(f"train.semi.randaugment_magnitude must be in [0, 30], randaugment_ops >= 1 and cutout "
                              f">= 0; got {semi.randaugment_magnitude}, {semi.randaugment_ops}, {semi.cutout}")
        if self.objective == "rotation" and semi.pseudo_labels:
            raise ConfigError("train.semi.pseudo_labels: rotation pre-training does not use labels, pseudo or not")
        if self.objective == "rotation":
            clash = {k: v for k, v, ok in (("sampler.name", self.sampler.name, "random"),
                                           ("loss.class_weights", self.loss.class_weights, "none"),
                                           ("ae.mode", self.ae.mode, "classify"),
                                           ("loss.posthoc_tau", self.loss.posthoc_tau, 0.0)) if v != ok}
            if clash:
                raise ConfigError(f"train.objective=rotation predicts rotations, not classes; these settings "
                                  f"do not apply: {', '.join(f'train.{k}={v}' for k, v in clash.items())}")


# The flat keys of TrainConfig before it had sections -> where they are now (an old key's error names it).
MOVED = {**{k: f"optim.{k}" for k in ("lr", "momentum", "weight_decay")},
         **{k: f"schedule.{k}" for k in ("reference_epochs", "warmup_epochs", "lr_milestones", "lr_factors",
                                         "drw_epoch")},
         **{k: f"loss.{k}" for k in ("class_weights", "weights_schedule", "weighted_reduction", "cb_beta",
                                     "focal_gamma", "ldam_max_m", "ldam_s", "logit_tau", "posthoc_tau")},
         "sampler_weights": "sampler.weights",
         **{k: f"data.{k}" for k in ("augment", "crop_padding", "norm_mean", "norm_std", "loader", "memory_limit_mb",
                                     "eval_batch_size")},
         "pretrain_unlabeled": "ssp.unlabeled", "ssp_rotations": "ssp.rotations",
         "ae_mode": "ae.mode", "recon_weight": "ae.recon_weight", "ae_epochs": "ae.epochs",
         "pseudo_labels": "semi.pseudo_labels", "semi_batches": "semi.batches", "unlabeled_share": "semi.unlabeled_share",
         "unlabeled_weight": "semi.unlabeled_weight", "self_training_rounds": "semi.rounds", "pseudo_loss": "semi.loss",
         "pseudo_tau": "semi.tau", "pseudo_augment": "semi.augment", "randaugment_ops": "semi.randaugment_ops",
         "randaugment_magnitude": "semi.randaugment_magnitude", "cutout": "semi.cutout",
         **{k: f"runtime.{k}" for k in ("num_processes", "device", "precision", "channels_last", "compile", "run_dir",
                                        "resume")},
         **{k: f"tracking.{k}" for k in ("experiment", "tags", "register", "register_alias", "system_metrics")}}


@dataclass
class PseudoLabelConfig:
    """Streaming pseudo-labelling (jobs/pseudolabel.py): score the unlabeled pool with a base model."""
    model: Optional[str] = None  # an MLflow run id or model URI (runs:/<id>/model, models:/name/1)
    input: Optional[str] = None  # the unlabeled Parquet directory, e.g. SPLITS/unlabeled
    out: Optional[str] = None  # OUT/labels, OUT/balance, OUT/stream.json
    checkpoint: Optional[str] = None  # the query's checkpoint; None: OUT/_checkpoint
    truth: Optional[str] = None  # hidden labels (id, label) of the pool; None: INPUT/../unlabeled_truth if present
    trigger: Literal["available-now", "continuous"] = "available-now"
    interval_s: float = 2.0  # continuous: seconds between micro-batch triggers
    timeout_s: float = 0.0  # continuous: stop after this many seconds (0: run until stopped)
    max_files_per_trigger: int = 1  # input files per micro-batch
    select: str = "all"  # a registered selection policy: all, threshold, class_threshold, top_k_per_class, crest
    tau: float = 0.95  # threshold, class_threshold: confidence threshold (of the most predicted class)
    alpha: float = 1.0  # class_threshold: tau_c = tau * (n_c / n_max) ** alpha, n_c = predictions of class c
    top_k: int = 100  # top_k_per_class: the k most confident predictions of each class
    crest_alpha: float = 3.0  # crest: keep rate mu_c = (N_(K+1-r(c)) / N_1) ** (1 / crest_alpha)
    adjust: Literal["none", "em", "bbse"] = "none"  # correct predictions for the pool prior estimated by EM or BBSE
    adjust_tau: float = 1.0  # the correction p * (pi_pool / pi_labeled) ** adjust_tau, before any policy
    val: Optional[str] = None  # held-out labeled split for BBSE; None: INPUT/../val when it has images
    refine: Literal["none", "darp"] = "none"  # darp: refine the soft labels to the estimated counts (needs adjust)
    darp_alpha: float = 2.0  # darp's pre-step: the alpha * target_k rows most confident in class k
    # this project's variant of CReST+'s distribution alignment: the predictions the policy selects from are
    # aligned to the labeled distribution, t annealed over the rounds (the published CReST+ aligns only the
    # consistency targets of a FixMatch-trained model and selects from raw predictions)
    align_labels: bool = False
    align_final_t: float = 0.5  # align_labels: the temperature of the last round's labels (the first: 1.0)
    # images per forward pass; 0: 128 on a CPU, 512 on a GPU (pipeline.accel.inference_batch). At 128
    # ResNet-32's activations stay in this CPU's cache (2 workers at once: fp32 615 vs 415 images/s each
    # at 512, bf16 1,400 vs 1,200)
    batch_size: int = 0
    threads_per_task: int = 1  # torch threads in each Python worker (a worker per core on local[*])
    # the scoring forward pass: fp32, or bf16 autocast (checked against fp32 on the test split when the
    # stream starts: agreement and top-1 recorded with the stream)
    precision: Literal["fp32", "bf16"] = "fp32"
    check_images: int = 2000  # precision bf16: test images of that check (the first by id)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    experiment: Optional[str] = None  # MLflow experiment of the "pseudolabel" run; None: the base model's
    # the stream's bounded state (pipeline.pseudolabel.state): a seeded sample of at most sample_values //
    # classes rows with their probabilities, for what needs rows (EM, prior-corrected policies); a pool within
    # it (200,000 images at 10 classes, 2,000 at 1,000) gets the exact balance, a larger one estimates with a
    # stated error; 8 MB of float32 probabilities in the driver (a state file: 9 MB at 1,000 classes, ~20 MB at 10
    # with its 200,000 ids), and EM's step costs two passes over it
    sample_values: int = 2_000_000
    sample_seed: int = 0
    # per-class MLflow step metrics (pl_count_<k>, pl_prior_em_<k>, ...: up to 8 a class) for pools of at most this
    # many classes; beyond, the pool's figures only (at 1,000 classes, 7,000 metrics a micro-batch cost more to log
    # than the whole state and balance); OUT/balance keeps every class's either way
    class_metrics_max: int = 100

    def validate(self) -> None:
        for key in ("max_files_per_trigger", "threads_per_task", "top_k", "sample_values"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pseudolabel.{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_size < 0:
            raise ConfigError(f"pseudolabel.batch_size must be >= 0 (0: the device's default), got {self.batch_size}")
        if self.class_metrics_max < 0:
            raise ConfigError(f"pseudolabel.class_metrics_max must be >= 0 (0: no per-class metrics), got "
                              f"{self.class_metrics_max}")
        if not 0 <= self.tau <= 1:
            raise ConfigError(f"pseudolabel.tau must be in [0, 1], got {self.tau}")
        if self.interval_s <= 0 or self.timeout_s < 0:
            raise ConfigError("pseudolabel.interval_s must be > 0 and pseudolabel.timeout_s >= 0")
        if self.refine != "none" and self.adjust == "none":
            raise ConfigError(f"pseudolabel.refine={self.refine} aligns the labels to an estimated pool prior: "
                              f"set pseudolabel.adjust to em or bbse (adjust_tau=0 to use the estimate for it alone)")
        if self.adjust_tau < 0 or self.crest_alpha <= 0:
            raise ConfigError(f"pseudolabel.adjust_tau must be >= 0 and pseudolabel.crest_alpha > 0, got "
                              f"{self.adjust_tau} and {self.crest_alpha}")


@dataclass
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    longtail: LongTailConfig = field(default_factory=LongTailConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pseudolabel: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            check = getattr(getattr(self, f.name), "validate", None)
            if check:
                check()


# --- type checking -------------------------------------------------------------------------

def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``. No lossy conversions."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"config key '{key}': expected {_describe(tp)}, got {type(value).__name__} {value!r}")
    if tp is float and not math.isfinite(value):  # YAML's .nan / .inf pass every comparison check
        raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
    return value


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _unknown(key: str, known: list[str]) -> ConfigError:
    section, _, leaf = key.partition(".")
    if section == "train" and leaf in MOVED:
        return ConfigError(f"config key '{key}' has moved: it is 'train.{MOVED[leaf]}' now")
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown config key '{key}'{hint}")


def apply_mapping(cfg: Any, mapping: dict, prefix: str = "", origin: str = "") -> None:
    """Merge a nested mapping (e.g. parsed YAML) into the dataclass ``cfg`` in place."""
    where = f" (in {origin})" if origin else ""
    if not isinstance(mapping, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}'{where}: expected a mapping, got {mapping!r}")
    hints = _field_types(cfg)
    for name, value in mapping.items():
        key = f"{prefix}{name}"
        if name not in hints:
            err = _unknown(key, list(hints))
            raise ConfigError(f"{err}{where}")
        current = getattr(cfg, name)
        if dataclasses.is_dataclass(current) and not isinstance(value, dict) and _named(current):
            current.name = _coerce(value, str, f"{key}.name")  # train.loss: focal is train.loss.name: focal
        elif dataclasses.is_dataclass(current):
            apply_mapping(current, value, f"{key}.", origin)
        else:
            try:
                setattr(cfg, name, _coerce(value, hints[name], key))
            except ConfigError as e:
                raise ConfigError(f"{e}{where}") from None


def _named(section: Any) -> bool:
    """A section chosen by name (train.loss, train.sampler): a plain value sets its ``name``."""
    return "name" in {f.name for f in dataclasses.fields(section)}


def get_key(cfg: Any, key: str) -> Any:
    """The value of a dotted key (``train.semi.pseudo_labels``)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def flatten(data: dict, prefix: str = "") -> dict:
    """A nested mapping as dotted keys: {"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}."""
    out = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def set_key(cfg: Any, key: str, raw: str) -> None:
    """Apply one ``key=value`` override; the value is parsed as YAML unless the key is a string."""
    *parents, leaf = key.split(".")
    node, path = cfg, ""
    for part in parents:
        hints = _field_types(node)
        if part not in hints or not dataclasses.is_dataclass(getattr(node, part)):
            raise _unknown(f"{path}{part}", list(hints))
        node, path = getattr(node, part), f"{path}{part}."
    hints = _field_types(node)
    if leaf not in hints:
        raise _unknown(key, list(hints))
    tp = hints[leaf]
    is_str = tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp))
    if is_str and raw.strip().lower() not in ("null", "none", "~"):
        value: Any = raw
    else:
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"config key '{key}': cannot parse {raw!r}: {e}") from None
    if dataclasses.is_dataclass(getattr(node, leaf)):
        apply_mapping(node, {leaf: value}, path)
    else:
        setattr(node, leaf, _coerce(value, tp, key))


# --- YAML layers ---------------------------------------------------------------------------

def _yaml_layers(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config file {path} extends itself (cycle: {' -> '.join(map(str, seen + (path,)))})")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, RecursionError) as e:  # RecursionError: nested past the parser's depth
        raise ConfigError(f"config file {path}: invalid YAML: {type(e).__name__}: {str(e)[:300]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    parents = data.pop("extends", []) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"config file {path}: extends must be a file name or a list of file names, got {parents!r}")
    layers: list[tuple[Path, dict]] = []
    for parent in parents:
        layers += _yaml_layers(path.parent / parent, seen + (path,))
    return layers + [(path, data)]


def resolve(config_files: list[str] = (), overrides: list[tuple[str, str]] = ()) -> Config:
    """Build the resolved config from the layers; raises ConfigError naming the key at fault. When
    ``train.splits`` names splits whose data set recorded train settings (``ingest.train_settings``),
    they are the layer right above the defaults."""
    layers = [(path, data) for file in config_files for path, data in _yaml_layers(Path(file))]
    cfg = _layered(layers, overrides)
    settings = data_train_settings(cfg.train.splits)
    if settings:
        cfg = _layered([(f"{cfg.train.splits} (the data set's ingest.train_settings)", {"train": settings})] + layers,
                       overrides)
    return cfg


def _layered(layers: list[tuple[Any, dict]], overrides: list[tuple[str, str]]) -> Config:
    cfg = Config()
    for path, data in layers:
        apply_mapping(cfg, data, origin=str(path))
    for key, raw in overrides:
        set_key(cfg, key, raw)
    cfg.validate()
    return cfg


def data_train_settings(splits: Optional[str]) -> dict:
    """The train settings the data set of ``splits`` recorded ({} for none, or no splits yet)."""
    if not splits or not fs.exists(fs.join(splits, Manifest.FILE)):
        return {}
    return Manifest.read(splits).train_settings


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, origin: str = "") -> Config:
    """The inverse of ``to_dict`` (e.g. a config handed to another process as JSON), type-checked."""
    cfg = Config()
    apply_mapping(cfg, data, origin=origin)
    cfg.validate()
    return cfg


def dump(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# --- a run's settings as a key and a digest (checkpoints, records, sweeps) ----------------------

# settings that do not change what a run computes (its weights): a resume may change them
NOT_IN_KEY = ("runtime.resume", "runtime.run_dir", "eval_every")


PATH_KEYS = ("splits", "weights_path", "semi.pseudo_labels")  # where the data lie: their content has its own sha256


def config_key(cfg: Config) -> dict:
    """The resolved training settings a checkpoint belongs to (paths absolute), as dotted keys."""
    train = flatten(to_dict(with_absolute_paths(cfg).train))
    return {k: v for k, v in train.items() if k not in NOT_IN_KEY}


def config_sha256(cfg: Config) -> str:
    """What a run computes, as one digest: its training settings without the paths of its inputs
    (the manifest's and pseudo-labels' sha256 say which data) or the settings of NOT_IN_KEY."""
    key = {k: v for k, v in config_key(cfg).items() if k not in PATH_KEYS}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def with_absolute_paths(cfg: Config) -> Config:
    """A copy whose path-valued keys no longer depend on the driver's working directory: the
    processes may start elsewhere (TorchDistributor runs them in executor folders on a cluster)."""
    t = cfg.train
    pretrained = fs.normalize(t.pretrained) if t.pretrained and os.path.exists(t.pretrained) else t.pretrained
    train = dataclasses.replace(
        t, splits=fs.normalize(t.splits) if t.splits else t.splits, pretrained=pretrained,
        weights_path=fs.normalize(t.weights_path) if t.weights_path else None,
        runtime=dataclasses.replace(t.runtime, run_dir=fs.normalize(t.runtime.run_dir)),
        semi=dataclasses.replace(t.semi, pseudo_labels=fs.normalize(t.semi.pseudo_labels) if t.semi.pseudo_labels else None))
    return dataclasses.replace(cfg, train=train)


if __name__ == "__main__":  # python -m pipeline.config > conf/defaults.yaml
    print("# Generated by `python -m pipeline.config`: the defaults every job starts from.", end="\n")
    print(dump(Config()), end="")
