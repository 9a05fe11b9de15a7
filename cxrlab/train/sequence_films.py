"""The film CNN of the sequence models: what made an EMB file's vectors, as a trainable module.

>>> store = film_store_for(emb.info, train_blocks=1)       # the run or backbone of `cxrlab embed`, films read once
>>> model = fit_sequence_model(seqs, config, films=store)  # with features.finetune: the CNN trained in the model
>>> images, maps = sequence_film_cams(model, seq)          # Grad-CAM of the output after each film

``FilmCNN`` maps ``[0, 1]`` film inputs (``prepare(sample)``: the same square resize as ``cxrlab embed`` for a
backbone, the run's own input pipeline for a run) to the pooled vector ``cxrlab embed`` writes, so a sequence
model trained on frozen EMB vectors can be run end to end from images (for its Grad-CAM), and a fine-tuned one
starts from exactly those vectors. ``FilmStore`` reads each film once and keeps the activations at the end of
the frozen stages, so fine-tuning the last stages costs a few small convolutions per film and step.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from cxrlab.data import schema
from cxrlab.errors import ConfigError, InputError


class FilmCNN(nn.Module):
    """Backbone (+ its normalisation) over ``[0, 1]`` film inputs → pooled features ``(films, F)``."""

    def __init__(self, body: nn.Module, mean: Sequence[float], std: Sequence[float],
                 prepare: Callable[[dict], Tensor], per_image: int, cam_layers: Callable[[nn.Module], list],
                 source: dict[str, Any]):
        super().__init__()
        self.body = body  # a cxrlab Backbone: stages() + pooled forward(x, start)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.prepare = prepare
        self.per_image = per_image
        self._cam_layers = cam_layers
        self.source = source

    @classmethod
    def from_source(cls, source: dict[str, Any]) -> "FilmCNN":
        """From an EMB file's ``info["source"]`` (a trained run or a registry backbone)."""
        from cxrlab.retrieval.embeddings import _square

        kind = source.get("kind")
        if kind == "run":
            from cxrlab.train import load_run

            run = load_run(source["run"], source.get("checkpoint", "best"))
            lung = source.get("lung_model")
            net = run.model
            return cls(net.backbone, net.mean.flatten().tolist(), net.std.flatten().tolist(),
                       lambda sample: run.inputs_for(sample, lung), run.pipeline.per_image,
                       lambda body: run.entry.cam_target_layers(body), dict(source))
        if kind == "backbone":
            from cxrlab.models import get_backbone_entry

            entry = get_backbone_entry(source["backbone"])
            weights = source.get("weights", "imagenet")
            body, _ = entry.create(in_chans=1, weights=weights)
            mean, std = entry.normalization(1, weights)
            size = int(source.get("size", 224))
            return cls(body, mean, std, lambda sample: torch.from_numpy(_square(sample[schema.KEY_IMAGE],
                                                                                size))[None, None],
                       1, entry.cam_target_layers, dict(source))
        raise ConfigError(f"the embeddings' source {source!r} is neither a run nor a backbone: the film CNN "
                          "cannot be rebuilt (fine-tuning and sequence Grad-CAM need it)")

    @property
    def n_stages(self) -> int:
        return len(self.body.stages())

    @property
    def cam_layers(self) -> list[nn.Module]:
        return self._cam_layers(self.body)

    def boundary(self, x: Tensor, stop: int) -> Tensor:
        """Activations after the first ``stop`` stages of ``[0, 1]`` input."""
        return self.body.run_stages((x - self.mean) / self.std, 0, stop)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        """Pooled features per film: ``x`` the ``[0, 1]`` input (``start=0``) or activations after ``start``
        stages; per-lung inputs (``per_image`` > 1 rows per film) are averaged like ``cxrlab embed`` does."""
        h = self.body((x - self.mean) / self.std if start == 0 else x, start=start)
        return h.reshape(-1, self.per_image, h.shape[-1]).mean(1)

    def freeze_prefix(self, frozen: int) -> list[nn.Parameter]:
        """Freeze the first ``frozen`` stages; returns the trainable parameters (those of the later stages)."""
        for p in self.parameters():
            p.requires_grad_(False)
        params = [p for stage in self.body.stages()[frozen:] for p in stage.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params


class FilmStore:
    """Each film's input read once (``image_path`` → ``[0, 1]`` tensor) and, for fine-tuning, its activations
    after the ``frozen`` stages (computed once, fp32, without gradients)."""

    def __init__(self, cnn: FilmCNN, frozen: int):
        if not 0 <= frozen < cnn.n_stages:
            raise ConfigError(f"features.train_blocks: the film CNN has {cnn.n_stages} stages; between 1 and "
                              f"{cnn.n_stages} can be trained")
        self.cnn, self.frozen = cnn.eval(), frozen
        self._inputs: dict[str, Tensor] = {}
        self._acts: dict[str, Tensor] = {}

    def input(self, path: str) -> Tensor:
        """``(per_image, C, H, W)`` ``[0, 1]`` input of one film."""
        if path not in self._inputs:
            from cxrlab.data.dataset import load_sample

            if not Path(path).is_file():
                raise InputError(path, "film of the sequence not found (the embeddings' image_path must still "
                                       "exist to fine-tune the CNN or draw its Grad-CAM)", field="image_path")
            sample = load_sample({schema.IMAGE: path}, None, label_columns=[])
            self._inputs[path] = self.cnn.prepare(sample).float()
        return self._inputs[path]

    @torch.no_grad()
    def activations(self, paths: Sequence[str], batch_size: int = 32) -> Tensor:
        """Activations after the frozen stages of each film, stacked ``(films * per_image, ...)``."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._acts]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            x = torch.cat([self.input(p) for p in chunk])
            act = self.cnn.boundary(x, self.frozen)
            for i, p in enumerate(chunk):
                self._acts[p] = act[i * self.cnn.per_image:(i + 1) * self.cnn.per_image].clone()
                self._inputs.pop(p, None)  # the activations are all a fine-tuned model reads again
        return torch.cat([self._acts[p] for p in paths]) if paths else torch.zeros(0)


def _scatter(feats: Tensor, lengths: Tensor) -> Tensor:
    """``(sum(lengths), F)`` patient-major rows → ``(B, T, F)`` zero-padded."""
    out = feats.new_zeros(len(lengths), int(lengths.max()), feats.shape[1])
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    out[mask] = feats
    return out


class FilmSequenceModel(nn.Module):
    """A film CNN (its last stages trainable) under a sequence head (:mod:`cxrlab.models.sequence`): the
    time-distributed CNN → LSTM of the seed, trained end to end from the cached frozen prefix."""

    def __init__(self, cnn: FilmCNN, head: nn.Module, store: FilmStore):
        super().__init__()
        self.cnn, self.head = cnn, head
        self.store = store  # not a module: shared by every fold's model, holds no parameters

    def features(self, paths: Sequence[str]) -> Tensor:
        return self.cnn(self.store.activations(paths), start=self.store.frozen)

    def padded_features(self, seqs: Sequence[Any], lengths: Tensor) -> Tensor:
        return _scatter(self.features([p for s in seqs for p in s.paths]), lengths)

    def train(self, mode: bool = True) -> "FilmSequenceModel":
        super().train(mode)
        # BatchNorm statistics stay as loaded: a batch of a few patients' films is too small to re-estimate them
        self.cnn.eval()
        return self


class _FilmInCourse(nn.Module):
    """The sequence output after film ``t`` as a function of film ``t``'s input alone (the earlier films'
    features fixed), so pytorch-grad-cam can differentiate it through the film CNN."""

    def __init__(self, cnn: FilmCNN, head: nn.Module, before: Tensor, gaps: Tensor):
        super().__init__()
        self.cnn, self.head = cnn, head
        self.before, self.gaps = before, gaps  # (t-1, F) fixed, (1, t, 2)

    def forward(self, x: Tensor) -> Tensor:
        film = self.cnn(x)  # (1, F)
        feats = torch.cat([self.before, film]).unsqueeze(0)
        lengths = torch.tensor([feats.shape[1]])
        return self.head(feats, self.gaps, lengths).view(1, 1)


class _OutputTarget:
    def __call__(self, output: Tensor) -> Tensor:
        return output.sum()


def sequence_film_cams(model: nn.Module, seq: Any, cnn: FilmCNN | None = None, method: str = "gradcam"
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each film ``t`` of ``seq``: its ``[0, 1]`` input image (the CNN's frame) and the ``method`` heatmap
    of the sequence model's output *after film t* (logit of the outcome, or Cox log-risk) with respect to film
    ``t``, the earlier films held fixed. ``model``: a :class:`FilmSequenceModel` or a head trained on the
    frozen vectors of ``cnn`` (then ``cnn`` reproduces them). Per-lung inputs (two rows per film) are refused."""
    from cxrlab.explain import compute_cam
    from cxrlab.train.sequence import collate

    if isinstance(model, FilmSequenceModel):
        cnn = model.cnn
    if cnn is None:
        raise ConfigError("sequence Grad-CAM of a model trained on frozen vectors needs the film CNN that made them")
    if cnn.per_image != 1:
        raise ConfigError("sequence Grad-CAM needs one input per film (this run feeds each lung separately)")
    head = model.head if isinstance(model, FilmSequenceModel) else model
    head.eval()
    cnn.eval()
    store = FilmStore(cnn, 0)
    inputs = [store.input(p) for p in seq.paths]
    with torch.no_grad():
        feats = torch.cat([cnn(x) for x in inputs])
    if not isinstance(model, FilmSequenceModel):
        _check_reproduces(feats.numpy(), np.asarray(seq.features, np.float32), cnn.source)
    gaps = collate([seq])["gaps"]
    images, maps = [], []
    for t, x in enumerate(inputs):
        wrapped = _FilmInCourse(cnn, head, feats[:t], gaps[:, :t + 1])
        heat = compute_cam(wrapped, x, method, cnn.cam_layers, [_OutputTarget()])
        images.append(x[0, 0].numpy())
        maps.append(heat[0])
    return images, maps


def _check_reproduces(rebuilt: np.ndarray, recorded: np.ndarray, source: dict[str, Any]) -> None:
    """The rebuilt CNN must give the embeddings' own vectors, or its heatmaps would explain another model."""
    if rebuilt.shape != recorded.shape:
        raise ConfigError(f"the film CNN rebuilt from {source} gives {rebuilt.shape[1]}-d vectors, the embeddings "
                          f"hold {recorded.shape[1]}-d ones: they were not made by it")
    num = (rebuilt * recorded).sum(1)
    cos = num / np.maximum(np.linalg.norm(rebuilt, axis=1) * np.linalg.norm(recorded, axis=1), 1e-12)
    if cos.min() < 0.98:  # bf16 embedding vs this fp32 pass differ by far less
        raise ConfigError(f"the film CNN rebuilt from {source} does not reproduce the embeddings' vectors "
                          f"(cosine {cos.min():.3f}); was the run retrained or the image changed since `cxrlab embed`?")


def trainable_copy(cnn: FilmCNN, frozen: int) -> tuple[FilmCNN, list[nn.Parameter]]:
    """A fresh copy of ``cnn`` for one model (folds never share fine-tuned weights), its last stages trainable."""
    fresh = copy.deepcopy(cnn)
    return fresh, fresh.freeze_prefix(frozen)


def film_store_for(emb_info: dict[str, Any], train_blocks: int) -> FilmStore:
    """The shared film store of a fine-tuned sequence model over an EMB file's films (``emb.info``)."""
    cnn = FilmCNN.from_source(emb_info.get("source", {}))
    return FilmStore(cnn, cnn.n_stages - min(int(train_blocks), cnn.n_stages))
