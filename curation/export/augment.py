"""Reinforced image embeddings: N seeded random augmentations per image, embedded, with their parameters.

Each view is a RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) and an optional
horizontal flip. Its parameters ``[top, left, height, width, flip]`` go into
``<uid>.paug.json`` so a trainer can re-create the exact view. Views are seeded
by uid and view number, so a re-export produces the same bytes.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from indexer.models import open_workspace_model
from indexer.store import Workspace


def view_params(image: Image.Image, uid: str, k: int) -> list[int]:
    seed = int.from_bytes(hashlib.sha256(f"{uid}/{k}".encode()).digest()[:8], "little")
    with torch.random.fork_rng():  # get_params draws from torch's global generator: seed it, leave it as it was
        torch.manual_seed(seed)
        top, left, height, width = RandomResizedCrop.get_params(image, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
        flip = int(torch.rand(1).item() < 0.5)
    return [int(top), int(left), int(height), int(width), flip]


def apply_params(image: Image.Image, params: list[int]) -> Image.Image:
    top, left, height, width, flip = params
    view = TF.crop(image, top, left, height, width)
    return TF.hflip(view) if flip else view


class Augmenter:
    """Embeds augmented views with the workspace's own model."""

    def __init__(self, ws: Workspace):
        self.model = open_workspace_model(ws, None)

    def embed(self, data: bytes, uid: str, n: int) -> tuple[np.ndarray, list[list[int]]]:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        params = [view_params(image, uid, k) for k in range(n)]
        pixels = torch.stack([self.model.preprocess(apply_params(image, p)) for p in params])
        return self.model.encode_images(pixels).astype(np.float32), params
