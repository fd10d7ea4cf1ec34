"""The groups of `segmote.training.config.TrainConfig`: one small dataclass per concern (the
model that trains, its data, the optimiser, the simulated prompts, calibration, the runtime).
The loss weights are `segmote.training.losses.LossWeights`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelSettings:
    """The model that trains.

    Attributes:
        backbone, checkpoint: base model (see `segmote.build.BACKBONES`).
        mote: MoTEConfig fields except balance_loss_weight (set by loss.balance).
        text_encoder: "minilm" (all-MiniLM-L6-v2, offline), "clip" (with text_encoder_path), or
            "none" / null (no text prompts).
        text_encoder_path: a local CLIP text-model folder for text_encoder "clip".
        ppt_queries: Q queries of the PPT module (paper: 2); 0 = no PPT.
        init_adapter: an adapter file to start from (a second training stage): its weights are
            loaded into the new adapter; parts the file lacks (e.g. the text / PPT modules of an
            adapter trained without them) keep their fresh initialisation. Its MoTE settings
            must match this config's (text_dim and ppt_queries may be added).
        train_parts: the adapter parts that train, of "expert_tokens", "mote", "head", "text"
            and "ppt" (None: all). E.g. [text, ppt] on top of init_adapter adds text prompts
            and prompt-free segmentation while box / point decoding stays bit-identical.
    """

    backbone: str = "litemedsam"
    checkpoint: str | None = None
    mote: dict[str, Any] = field(default_factory=dict)
    text_encoder: str | None = "minilm"
    text_encoder_path: str | None = None
    ppt_queries: int = 2
    init_adapter: str | None = None
    train_parts: list[str] | None = None


@dataclass
class DataSettings:
    """What the run trains and validates on.

    Attributes:
        folders: the dataset folders (kept so `--resume` needs no --data; flat key "data").
        manifest: a curation manifest (`segmote curate`): train on exactly its selected
            (slice, class) samples instead of every slice of the dataset folders; the selection
            is still split by patient into train / val (val_fraction: 0 trains on all of it).
        split: a split JSON (`segmote.data.datasets.save_split` format) to use instead of
            drawing one from val_fraction and seed (e.g. the same held-out patients across runs).
        axis, min_foreground, val_fraction: slicing of 3-D volumes and the case split.
        val_per_class: at most this many validation samples per dataset/class, evenly spaced
            (None: all); keeps per-epoch validation cheap on atlases with many classes.
        window: CT window for the cached images (None: the modality default).
        cache_dir: embedding cache (None: the shared SEGMOTE_HOME/embedding-cache).
        sampling_balance: how an epoch draws training samples: "none" (each sample once,
            shuffled), "dataset" (every dataset equally often) or "dataset_class" (every dataset
            equally, and within it every class equally); the latter two draw with replacement,
            so a small dataset is not drowned by a large one.
        sampling_balance_power: dataset shares proportional to (samples of the dataset) **
            power (0: equal shares; 0.5: square-root "temperature" sampling; see
            `segmote.training.loader.sample_weights`).
        samples_per_epoch: samples drawn per epoch (None: the number of training samples).
    """

    folders: list[str] = field(default_factory=list)
    manifest: str | None = None
    split: str | None = None
    axis: int = 2
    min_foreground: int = 10
    val_fraction: float = 0.2
    val_per_class: int | None = None
    window: str | None = None
    cache_dir: str | None = None
    sampling_balance: str = "none"
    sampling_balance_power: float = 0.0
    samples_per_epoch: int | None = None


@dataclass
class OptimSettings:
    """The optimiser and its schedule.

    Attributes:
        epochs, batch_size: batch_size is the global batch (split evenly over DDP ranks).
        lr, weight_decay: AdamW.
        milestones, gamma: step schedule: lr x gamma at each milestone epoch (0-based; paper:
            halved at epochs 7 and 12).
        grad_clip: max global gradient norm (0 = off).
    """

    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    milestones: list[int] = field(default_factory=lambda: [7, 12])
    gamma: float = 0.5
    grad_clip: float = 1.0


@dataclass
class PromptSettings:
    """The simulated prompts of each training sample.

    Attributes:
        mix: probability of each first-prompt kind: "box", "point" or "text" (text alone:
            PPT tokens conditioned on the class's text embedding, i.e. prompt-free segmentation
            of that class). Without a text encoder or PPT the text share goes to the others.
            (Flat key "prompt_mix".)
        progressive: the "text" (prompt-free) share starts at this value in the first epoch and
            rises linearly to mix["text"] in the last one (progressive prompt tokenization;
            logged per epoch as "ppt_share"); None: constant.
        text_with_prompt: probability that a box / point prompt also gets the class's text.
        absent_prob: share of prompt-free samples that ask for a class of the same dataset that
            is absent from the slice (target: an empty mask), so the model learns to answer
            "not here" and its confidence can be calibrated.
        absent_other_modalities: also count as absent, for a sample of modality M, every class
            that no dataset of modality M labels (an AAL structure asked on a microscopy image),
            in training and in calibration. Right only where the modalities image disjoint
            anatomy: a CT "kidney" is not absent from an MR abdomen slice. Off by default.
        box_jitter: max shift of each box side, as a fraction of the box extent.
        refine_rounds: refinement rounds after the first prompt (previous mask + new clicks).
        refine_clicks: number of new clicks per round, drawn uniformly from this list.
    """

    mix: dict[str, float] = field(
        default_factory=lambda: {"box": 0.4, "point": 0.3, "text": 0.3})
    progressive: float | None = 0.05
    text_with_prompt: float = 0.5
    absent_prob: float = 0.15
    absent_other_modalities: bool = False
    box_jitter: float = 0.1
    refine_rounds: int = 2
    refine_clicks: list[int] = field(default_factory=lambda: [1, 3, 4, 7])


@dataclass
class CalibrationSettings:
    """How the automatic mode's confidence threshold is chosen.

    Attributes:
        calibrate_on: "val" (the validation cases) or "train" (up to 8 training samples per
            class: for runs whose validation cases are the test set; computed after the last
            epoch only, so earlier epochs' adapters carry no threshold).
        auto_fp_target: the threshold is the lowest whose false-positive rate on absent classes
            is at most this.
    """

    calibrate_on: str = "val"
    auto_fp_target: float = 0.05


@dataclass
class RuntimeSettings:
    """How the run executes; none of it changes what is learnt, except amp.

    Attributes:
        amp: autocast dtype ("auto": bf16 on a GPU that supports it, else fp16 on a GPU, fp32
            on a CPU; "bf16" / "fp16" on any device, "none": fp32; `segmote.precision`).
        recompute_rounds: keep no activations of a prompt round for the backward pass but
            recompute them there, one round at a time (activation checkpointing): the same
            gradients, about a fifth more step time, far less memory (docs/benchmarks.md).
        trim_memory: on a CPU, with recompute_rounds, give the heap pages each prompt group
            freed back to the system before the backward pass recomputes the next one
            (`segmote.training.memory`; glibc keeps them resident otherwise): the same
            numbers, a lower peak (docs/benchmarks.md).
        num_workers: DataLoader workers reading cached embeddings.
        engine: what encodes the cache's slices (the frozen encoder only): "torch", or a CPU
            engine of `segmote.engine` ("onnxruntime", "openvino", "auto").
        save_every: also write the resume state every N steps (0: at epoch ends only).
        log_every: TensorBoard scalars every N steps.
    """

    amp: str = "auto"
    recompute_rounds: bool = True
    trim_memory: bool = True
    num_workers: int = 0
    engine: str = "torch"
    save_every: int = 100
    log_every: int = 10
