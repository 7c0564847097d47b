"""C3D (Tran et al., ICCV 2015) clip encoder: one fc6 feature per 16-frame clip.

The network is the original Sports-1M C3D in torch, with the module names of the common pytorch
port (DavideA/c3d-pytorch), so its ``c3d.pickle`` state dict (keys ``conv1.weight`` ...
``fc8.bias``) loads strictly. The feature is fc6 after its ReLU (4096-d), the layer the C3D
authors and the moment-retrieval literature extract; fc7/fc8 exist only so the checkpoint loads.

Preprocessing follows the weights' own convention, the one place in groundcache where input
constants are written by hand, because neither torch nor the checkpoint carries them: the Caffe
model was trained on BGR frames resized to 128x171, minus the Sports-1M training mean, centre
cropped to 112x112, with raw 0-255 values (no scaling). The mean is the per-channel average of the
Sports-1M mean volume, ``(B, G, R) = (90, 98, 102)``, and the crop is rows 8:120, columns 30:142,
both as in the widely used pytorch port (jfzhang95/pytorch-video-recognition) of these weights.
Frames are resized with antialiased bilinear interpolation.

Weights are not downloadable from a model hub: get ``c3d.pickle`` (the Sports-1M weights linked
from https://github.com/DavideA/c3d-pytorch) and pass ``weights="/path/to/c3d.pickle"``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cache_schema.spec import EncoderSpec
from extract.encoders.registry import (
    FEATURE_DTYPE,
    RANDOM_INIT,
    Encoder,
    EncoderError,
    Precision,
    register_encoder,
    resolve_weights_path,
    seeded_init,
    stride_from_fps,
)

FRAMES_PER_CLIP = 16
RESIZE_HW = (128, 171)
CROP_ROWS = slice(8, 120)
CROP_COLS = slice(30, 142)
CROP_SIZE = 112
SPORTS1M_MEAN_BGR = (90.0, 98.0, 102.0)
FC6_DIM = 4096
SPORTS1M_CLASSES = 487
WEIGHTS_HELP = ("C3D needs the Sports-1M weights: download c3d.pickle (linked from "
                "https://github.com/DavideA/c3d-pytorch) and pass weights='/path/to/c3d.pickle', "
                "or weights='none' for a random init")


def _conv(c_in: int, c_out: int) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, kernel_size=3, padding=1)


class C3D(nn.Module):
    """The Sports-1M C3D network; ``forward`` returns fc6 after ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv(3, 64)
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 2, 2), stride=(1, 2, 2))  # no temporal pooling yet
        self.conv2 = _conv(64, 128)
        self.pool2 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv3a = _conv(128, 256)
        self.conv3b = _conv(256, 256)
        self.pool3 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv4a = _conv(256, 512)
        self.conv4b = _conv(512, 512)
        self.pool4 = nn.MaxPool3d(kernel_size=2, stride=2)
        self.conv5a = _conv(512, 512)
        self.conv5b = _conv(512, 512)
        self.pool5 = nn.MaxPool3d(kernel_size=2, stride=2, padding=(0, 1, 1))  # 7x7 -> 4x4, as in Caffe
        self.fc6 = nn.Linear(512 * 1 * 4 * 4, FC6_DIM)
        # fc7/fc8 are not used for features; they are kept so the Sports-1M checkpoint loads strictly.
        self.fc7 = nn.Linear(FC6_DIM, FC6_DIM)
        self.fc8 = nn.Linear(FC6_DIM, SPORTS1M_CLASSES)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.pool1(F.relu(self.conv1(clips)))  # (B, 64, 16, 56, 56)
        x = self.pool2(F.relu(self.conv2(x)))  # (B, 128, 8, 28, 28)
        x = self.pool3(F.relu(self.conv3b(F.relu(self.conv3a(x)))))  # (B, 256, 4, 14, 14)
        x = self.pool4(F.relu(self.conv4b(F.relu(self.conv4a(x)))))  # (B, 512, 2, 7, 7)
        x = self.pool5(F.relu(self.conv5b(F.relu(self.conv5a(x)))))  # (B, 512, 1, 4, 4)
        return F.relu(self.fc6(x.flatten(1)))  # (B, 4096)


def preprocess_clips(clips: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 RGB clips (B, 16, H, W, 3) -> C3D input (B, 3, 16, 112, 112), BGR minus the mean."""
    b, f, h, w, _ = clips.shape
    x = torch.from_numpy(clips).to(device).flip(-1)  # (B, F, H, W, 3) RGB -> BGR
    x = x.reshape(b * f, h, w, 3).permute(0, 3, 1, 2).float()  # (B*F, 3, H, W), 0-255
    x = F.interpolate(x, size=RESIZE_HW, mode="bilinear", align_corners=False, antialias=True)
    # x: (B*F, 3, 128, 171)
    x = x - torch.tensor(SPORTS1M_MEAN_BGR, device=device).view(1, 3, 1, 1)
    x = x[:, :, CROP_ROWS, CROP_COLS]  # (B*F, 3, 112, 112)
    return x.reshape(b, f, 3, CROP_SIZE, CROP_SIZE).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, F, 112, 112)


def load_c3d_state_dict(name: str, model: C3D, weights: str) -> None:
    """Load a c3d.pickle state dict into ``model``, raising EncoderError naming the file."""
    path = resolve_weights_path(name, weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise EncoderError(f"encoder {name!r}: {str(path)!r} is not a torch state dict: {err}") from err
    if not isinstance(state, dict):
        raise EncoderError(f"encoder {name!r}: {str(path)!r} holds a {type(state).__name__}, "
                           "not a state dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise EncoderError(f"encoder {name!r}: {str(path)!r} does not match the C3D architecture "
                           f"(expected keys conv1.weight ... fc8.bias): {err}") from err


@dataclass(frozen=True)
class C3DConfig:
    """The Sports-1M C3D clip encoder (video only)."""

    def specs(self, name: str, *, weights: str | None, fps: float) -> tuple[EncoderSpec, None]:
        if weights is None:
            raise EncoderError(f"encoder {name!r}: {WEIGHTS_HELP}")
        weights_id = RANDOM_INIT if weights == RANDOM_INIT else str(resolve_weights_path(name, weights))
        return EncoderSpec(name=name, modality="video", dim=FC6_DIM, dtype=FEATURE_DTYPE,
                           weights_id=weights_id,
                           library=f"torch {torch.__version__}", normalized=False,
                           stride_sec=stride_from_fps(name, fps), frames_per_feature=FRAMES_PER_CLIP,
                           input_size=CROP_SIZE), None

    def build(self, name: str, *, weights: str | None, device: str | torch.device, precision: Precision,
              compile: bool, batch_size: int | None, fps: float) -> C3DEncoder:
        video_spec, _ = self.specs(name, weights=weights, fps=fps)
        with seeded_init():
            model = C3D()
        if weights != RANDOM_INIT:
            load_c3d_state_dict(name, model, weights)
        return C3DEncoder(model, video_spec=video_spec, device=device, precision=precision,
                          batch_size=batch_size, compile=compile)


class C3DEncoder(Encoder):
    """C3D over (N, 16, H, W, 3) uint8 clips -> (N, 4096) fc6 features."""

    default_batch_size = 8  # a clip's conv1 activations alone take ~50 MB in fp32

    def __init__(self, model: C3D, *, video_spec: EncoderSpec, device: str | torch.device,
                 precision: Precision, batch_size: int | None, compile: bool) -> None:
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.video_spec = video_spec
        self.model = model.to(self.device).eval().requires_grad_(False)
        self._forward = torch.compile(self.model) if compile else self.model

    def preprocess_video(self, frames: np.ndarray) -> torch.Tensor:
        return preprocess_clips(frames, self.device)  # (B, 3, 16, 112, 112)

    def forward_video(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._forward(pixels)  # (B, 4096)


@register_encoder("c3d")
def c3d() -> C3DConfig:
    return C3DConfig()
