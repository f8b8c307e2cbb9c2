"""Preprocessing and augmentation, derived from a model's config.

A model declares its input size and normalisation once (``PreprocessConfig``);
the train and eval pipelines are built from it here and never restated.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """What a model expects as input: square size and per-channel mean/std (0..1 scale)."""

    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 8 <= int(self.input_size) <= 1024:
            raise ValueError(f"input_size must be between 8 and 1024 pixels, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")


# (low, high, high included): the one statement of each augmentation bound; the Train page's widgets use it too
AUGMENTATION_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "rotation_degrees": (0.0, 180.0, True),
    "brightness": (0.0, 1.0, False),
    "contrast": (0.0, 1.0, False),
    "crop_scale_min": (0.1, 1.0, True),
    "blur_sharpen": (0.0, 1.0, True),
    "erasing": (0.0, 1.0, True),
}


@dataclass
class AugmentationConfig:
    """Training-time augmentation; ``augment=False`` turns all of it off."""

    augment: bool = field(default=True, metadata={"help": "augment training images"})
    rotation_degrees: float = field(default=12.0, metadata={"help": "augmentation: max random rotation (degrees)"})
    brightness: float = field(default=0.3, metadata={"help": "augmentation: brightness jitter factor (0 = off)"})
    contrast: float = field(default=0.3, metadata={"help": "augmentation: contrast jitter factor (0 = off)"})
    horizontal_flip: bool = field(default=True, metadata={"help": "augmentation: random left-right flips"})
    crop_scale_min: float = field(default=0.8, metadata={
        "help": "augmentation: random-resized-crop minimum area fraction (1 = no crop)"})
    blur_sharpen: float = field(default=0.0, metadata={
        "help": "augmentation: probability of a random Gaussian blur or sharpening (0 = off): upscaled 48 px "
                "crops look soft, downscaled photos sharp; this teaches the model to ignore the difference"})
    erasing: float = field(default=0.0, metadata={
        "help": "augmentation: probability of erasing a random rectangle (occlusion by hands, glasses, hair; "
                "0 = off)"})

    def __post_init__(self) -> None:
        self.check_augmentation()

    def check_augmentation(self) -> None:
        for name, (low, high, high_included) in AUGMENTATION_BOUNDS.items():
            value = getattr(self, name)
            if not (low <= value <= high if high_included else low <= value < high):
                closing = "]" if high_included else ")"
                raise ValueError(f"{name} must be in [{low:g}, {high:g}{closing}, got {value}")

    @property
    def augmentation(self) -> "AugmentationConfig":
        """The augmentation part alone (what :func:`emotion.data.transforms.build_transform` takes)."""
        return AugmentationConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(AugmentationConfig)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("expected an HxWx3 uint8 array (decode with emotion.images.load_image_array)")
    if not image.flags.writeable or not image.flags.c_contiguous:
        image = np.array(image, order="C")  # cached arrays are read-only; torch wants its own
    return torch.from_numpy(image).permute(2, 0, 1)


def build_transform(
    preprocess: PreprocessConfig, augmentation: AugmentationConfig | None = None, train: bool = False,
    grayscale: bool = False,
) -> Callable[[np.ndarray], torch.Tensor]:
    """HxWx3 uint8 array -> normalised float CHW tensor of the model's input size.

    Train mode adds the configured augmentation; eval mode only resizes.
    ``grayscale`` first replaces the colours by their luminance on all three
    channels, as prediction does for a model trained on grey faces (FER2013).
    """
    size = int(preprocess.input_size)
    ops: list = [v2.Lambda(_to_tensor)]
    if grayscale:
        ops.append(v2.Grayscale(num_output_channels=3))
    aug = augmentation if (train and augmentation is not None and augmentation.augment) else None
    if aug is not None and aug.crop_scale_min < 1.0:
        ops.append(v2.RandomResizedCrop(size, scale=(aug.crop_scale_min, 1.0), ratio=(0.9, 1.1),
                                        antialias=True))
    else:
        ops.append(v2.Resize((size, size), antialias=True))
    if aug is not None:
        if aug.horizontal_flip:
            ops.append(v2.RandomHorizontalFlip())
        if aug.rotation_degrees > 0:
            ops.append(v2.RandomRotation(aug.rotation_degrees))
        if aug.brightness > 0 or aug.contrast > 0:
            ops.append(v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast))
        if aug.blur_sharpen > 0:
            sigma_max = max(0.2, size / 64)  # about one source pixel of a 48 px crop upscaled to ``size``
            kernel = 2 * int(round(2 * sigma_max)) + 1
            ops.append(v2.RandomApply([v2.RandomChoice([
                v2.GaussianBlur(kernel, sigma=(0.1, sigma_max)),
                v2.RandomAdjustSharpness(sharpness_factor=3.0, p=1.0),
            ])], p=aug.blur_sharpen))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(preprocess.mean), list(preprocess.std))]
    if aug is not None and aug.erasing > 0:
        ops.append(v2.RandomErasing(p=aug.erasing, scale=(0.02, 0.15), value=0))
    return v2.Compose(ops)


def denormalize(tensor: torch.Tensor, preprocess: PreprocessConfig) -> np.ndarray:
    """Undo normalisation for display: CHW float tensor -> HxWx3 uint8 array."""
    mean = torch.tensor(preprocess.mean).view(3, 1, 1)
    std = torch.tensor(preprocess.std).view(3, 1, 1)
    img = (tensor.detach().cpu().float() * std + mean).clamp(0, 1)
    return (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
