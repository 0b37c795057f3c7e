"""Keras models: the seed's sequential CNN and a U-Net. Both take ``(None, None, 1)`` float32 in [0, 1]
and output ``(None, None, 1)`` interior probabilities (sigmoid), so exported ONNX keeps dynamic H and W.

The default U-Net has a stride-2 stem (``stem=2``): a stride-2 3x3 convolution first, the U-Net's levels at
half resolution, and a stride-2 2x2 transposed convolution back to full resolution as the sigmoid output.
``head`` > 0 adds a small full-resolution head instead: the input image joins ``head`` upsampled feature
maps and two 3x3 convolutions run at full resolution before a 1x1 sigmoid output (it did not pay for its
cost on the ISBI slices, docs/accuracy.md, so it is off by default).
Why: a classic U-Net's first level runs its thinnest layers (``width`` channels) at full resolution, where
CPU kernels are memory-bound and wide SIMD blocks are partly empty, so that level takes a larger share of
the run time than of the arithmetic; the stem moves it to half resolution (measurements: docs/design.md,
docs/benchmarks.md). ``stem=1`` builds the classic U-Net.

TensorFlow is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

MODEL_KINDS = ("unet", "cnn")
STEMS = (1, 2)
MAX_SIZE_MULTIPLE = 128
"""A quarter of the 512-pixel tile: tiles must overlap by a halo that is a multiple of this."""
BN_MOMENTUM = 0.9
"""Batch-norm moving-average momentum: the statistics average over about 1 / (1 - 0.9) = 10 recent batches.
Keras' default 0.99 averages over about 100, too slow for short runs: validation (inference-mode)
predictions stay near-constant until the averages catch up."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model. ``width`` = base filters, ``depth`` = poolings (U-Net), or the
    CNN's hidden conv layers minus one, ``stem`` = stride of the U-Net's first convolution (1: classic, full-resolution
    first level; 2: the levels run at half resolution; 0: the kind's default, 2 for the U-Net). The CNN has
    no stem (always 1). ``head`` = channels of the optional full-resolution head of a stem U-Net (0: none,
    the transposed convolution is the output). The width and depth
    defaults are the U-Net's (the CLI gives the CNN 32 and 4)."""

    kind: str = "unet"
    width: int = 16
    depth: int = 3
    batch_norm: bool = True
    stem: int = 0
    head: int = 0

    def __post_init__(self) -> None:
        if self.stem == 0:
            object.__setattr__(self, "stem", 2 if self.kind == "unet" else 1)
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"unknown model kind {self.kind!r}; choose one of {', '.join(MODEL_KINDS)}")
        if not 1 <= self.width <= 256:
            raise ValueError(f"width {self.width} out of range; choose 1..256 base filters")
        if not 1 <= self.depth <= 8:
            raise ValueError(f"depth {self.depth} out of range; choose 1..8")
        if isinstance(self.stem, bool) or self.stem not in STEMS:
            raise ValueError(f"stem {self.stem!r} out of range; choose 1 or 2")
        if self.kind == "cnn" and self.stem != 1:
            raise ValueError(f"stem {self.stem}: the CNN has no stem; use stem 1 or the U-Net")
        if self.head and (self.kind != "unet" or self.stem == 1):
            raise ValueError(f"head {self.head}: only a U-Net with stem 2 has a full-resolution head; use head 0")
        if not 0 <= self.head <= 64:
            raise ValueError(f"head {self.head} out of range; choose 0 (none) to 64 channels")
        if self.size_multiple > MAX_SIZE_MULTIPLE:
            deepest = (MAX_SIZE_MULTIPLE // self.stem).bit_length() - 1
            raise ValueError(f"depth {self.depth} with stem {self.stem} makes inputs multiples of "
                             f"{self.size_multiple}, more than {MAX_SIZE_MULTIPLE} (a quarter of a 512-pixel "
                             f"tile); choose depth <= {deepest}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        """The inverse of ``to_dict``; a run recorded before stems existed was a classic U-Net (stem 1)."""
        known = {f.name for f in fields(cls)}
        return cls(**{"stem": 1, **{key: value for key, value in values.items() if key in known}})

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (stem x 2^depth for the U-Net, 1 for the CNN)."""
        return self.stem * 2**self.depth if self.kind == "unet" else 1

    @property
    def receptive_field(self) -> int:
        """Theoretical receptive field in pixels (one side of the square context of one output pixel)."""
        if self.kind != "unet":
            return 1 + 2 * (self.depth + 2)
        return _unet_receptive_field(self.depth, self.stem) + (4 if self.head else 0)  # head: two 3x3 convs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unet_receptive_field(depth: int, stem: int) -> int:
    field, jump = (1, 1) if stem == 1 else (3, stem)  # the stem: a 3x3 convolution with stride ``stem``
    for _ in range(depth):  # encoder: two 3x3 convs, then 2x2 max-pool
        field += 4 * jump + jump
        jump *= 2
    field += 4 * jump  # bottleneck: two 3x3 convs
    for _ in range(depth):  # decoder: 2x2 stride-2 transposed conv, then two 3x3 convs
        jump //= 2
        field += jump + 4 * jump
    if stem > 1:  # the output: a stem x stem transposed convolution with stride ``stem``
        field += (stem - 1) * (jump // stem)
    return field


def check_input_size(spec: ModelSpec, height: int, width: int, name: str = "input") -> None:
    """Raise ``ValueError`` unless ``height`` and ``width`` are multiples of ``spec.size_multiple``."""
    multiple = spec.size_multiple
    if height % multiple or width % multiple:
        raise ValueError(
            f"{name}: size {width}x{height} is not a multiple of {multiple} (stem x 2^depth for this U-Net, "
            f"stem {spec.stem}, depth {spec.depth}); pad or crop to a multiple of {multiple}, or tile with "
            "seg.runtime.Segmenter"
        )


def build_model(spec: ModelSpec) -> Any:
    """A compiled-free ``keras.Model`` for ``spec``: ``(N, H, W, 1)`` -> ``(N, H, W, 1)`` in [0, 1]."""
    return _build_unet(spec) if spec.kind == "unet" else _build_cnn(spec)


def _conv_block(x: Any, filters: int, batch_norm: bool, name: str) -> Any:
    from keras import layers

    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"{name}_conv{i}")(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def _build_unet(spec: ModelSpec) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input(shape=(None, None, 1), name="image")
    x, skips = (inputs if spec.stem == 1 else _stem(inputs, spec)), []
    for level in range(spec.depth):
        x = _conv_block(x, spec.width * 2**level, spec.batch_norm, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, spec.width * 2**spec.depth, spec.batch_norm, "bottom")
    for level in reversed(range(spec.depth)):
        filters = spec.width * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}_upconv")(x)
        x = layers.Concatenate(name=f"up{level}_concat")([skips[level], x])
        x = _conv_block(x, filters, spec.batch_norm, f"up{level}")
    if spec.head:
        x = _full_resolution_head(inputs, x, spec)
    if spec.stem == 1 or spec.head:
        outputs = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="prob")(x)
    else:
        outputs = layers.Conv2DTranspose(1, spec.stem, strides=spec.stem, activation="sigmoid", dtype="float32",
                                         name="prob")(x)
    suffix = ("" if spec.stem == 1 else f"_s{spec.stem}") + (f"_h{spec.head}" if spec.head else "")
    return keras.Model(inputs, outputs, name=f"unet_w{spec.width}_d{spec.depth}{suffix}")


def _stem(inputs: Any, spec: ModelSpec) -> Any:
    """A 3x3 convolution with stride ``spec.stem`` (+ batch norm, ReLU): ``(N, H, W, 1)`` ->
    ``(N, H/stem, W/stem, width)``."""
    from keras import layers

    x = layers.Conv2D(spec.width, 3, strides=spec.stem, padding="same", use_bias=not spec.batch_norm,
                      name="stem_conv")(inputs)
    if spec.batch_norm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    return layers.ReLU(name="stem_relu")(x)


def _full_resolution_head(inputs: Any, x: Any, spec: ModelSpec) -> Any:
    """Half-resolution features ``(N, H/stem, W/stem, width)`` -> ``(N, H, W, head)``: a stride-``stem``
    transposed convolution, the input image concatenated, two 3x3 convolutions."""
    from keras import layers

    x = layers.Conv2DTranspose(spec.head, spec.stem, strides=spec.stem, use_bias=not spec.batch_norm,
                               name="head_upconv")(x)
    if spec.batch_norm:
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    x = layers.Concatenate(name="head_concat")([inputs, x])
    return _conv_block(x, spec.head, spec.batch_norm, "head")


def _build_cnn(spec: ModelSpec) -> Any:
    """The seed's simple sequential CNN: ``depth`` + 1 Conv2D+ReLU layers and a sigmoid Conv2D."""
    import keras
    from keras import layers

    model = keras.Sequential(name=f"cnn_w{spec.width}_d{spec.depth}")
    model.add(keras.Input(shape=(None, None, 1), name="image"))
    for i in range(spec.depth + 1):
        model.add(layers.Conv2D(spec.width, 3, padding="same", activation="relu", name=f"conv{i}"))
    model.add(layers.Conv2D(1, 3, padding="same", activation="sigmoid", dtype="float32", name="prob"))
    return model
