"""`ConvGeometry`: the 2-D convolution geometry of one layer (kernel, strides, dilations, per-side pads,
groups, padding mode), with the one output-size formula and the one 'same'-padding computation crisp uses."""

from __future__ import annotations

from dataclasses import dataclass


def pair(value, name: str = "value") -> tuple[int, int]:
    """``3`` -> ``(3, 3)``; a 2-sequence -> a tuple of two ints."""
    if isinstance(value, int):
        return (value, value)
    items = tuple(int(v) for v in value)
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or two ints, got {value!r}")
    return items  # type: ignore[return-value]


def same_pads(kernel, dilations=(1, 1), upper: bool = True) -> tuple[int, int, int, int]:
    """Per-side pads (top, left, bottom, right) of stride-1 'same' padding; the odd pixel goes to the
    end (``upper=True``, torch's and ONNX ``SAME_UPPER``'s choice) or to the beginning (``SAME_LOWER``)."""
    totals = [d * (k - 1) for d, k in zip(pair(dilations), pair(kernel))]
    small = [t // 2 for t in totals]
    big = [t - t // 2 for t in totals]
    begin, end = (small, big) if upper else (big, small)
    return (begin[0], begin[1], end[0], end[1])


def conv_out_size(size: int, kernel: int, stride: int = 1, dilation: int = 1, pad_begin: int = 0, pad_end: int | None = None) -> int:
    """Output length of a convolution along one axis (``pad_end`` defaults to ``pad_begin``)."""
    pad_end = pad_begin if pad_end is None else pad_end
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right (ONNX order)
    groups: int = 1
    padding_mode: str = "zeros"  # torch's names: "zeros", "reflect", "replicate", "circular"

    @classmethod
    def of_conv2d(cls, conv) -> "ConvGeometry":
        """The geometry of a ``torch.nn.Conv2d`` (string paddings 'valid' / 'same' resolved to pads)."""
        kernel, dilations = pair(conv.kernel_size), pair(conv.dilation)
        if conv.padding == "same":
            pads = same_pads(kernel, dilations)
        elif conv.padding == "valid":
            pads = (0, 0, 0, 0)
        else:
            ph, pw = pair(conv.padding)
            pads = (ph, pw, ph, pw)
        return cls(kernel, pair(conv.stride), dilations, pads, int(conv.groups), str(conv.padding_mode))

    @property
    def padding(self) -> tuple[int, int] | None:
        """Pads as torch's symmetric ``(ph, pw)``, or None when the two sides differ."""
        top, left, bottom, right = self.pads
        return (top, left) if (top, left) == (bottom, right) else None

    @property
    def pointwise(self) -> bool:
        """1x1, stride 1, no padding: the input is already the GEMM operand."""
        return self.kernel == (1, 1) and self.strides == (1, 1) and not any(self.pads)

    @property
    def kernel_positions(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        """Output ``(oh, ow)`` for an input of ``height x width``."""
        top, left, bottom, right = self.pads
        return (conv_out_size(height, self.kernel[0], self.strides[0], self.dilations[0], top, bottom),
                conv_out_size(width, self.kernel[1], self.strides[1], self.dilations[1], left, right))

    def label(self, out_channels: int) -> str:
        """``conv3x3``, ``conv3x3 dw`` (depthwise) or ``conv3x3 g4``."""
        text = f"conv{self.kernel[0]}x{self.kernel[1]}"
        if self.groups != 1:
            text += " dw" if self.groups == out_channels else f" g{self.groups}"
        return text
