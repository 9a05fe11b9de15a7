"""Outcome models over a patient's series of films: frozen per-film features → LSTM (or a baseline) → one output.

>>> net = SequenceNet(n_features=1280, hidden=64)
>>> out = net(features, gaps, lengths)          # (B,) logit (binary head) or log-risk (Cox head)
>>> steps = net.per_step(features, gaps, lengths)  # (B, T): the output after each film, NaN at padding

``features`` ``(B, T, F)`` padded, ``gaps`` ``(B, T, 2)`` the time inputs of each film (log1p of days since the
previous film and since the first), ``lengths`` ``(B,)`` real films per patient. The LSTM runs on packed
sequences, so padding never enters it; the output is read at each patient's last real film. The LSTM is causal:
the output after film t depends only on films 1..t, which is what "prediction at any point in the course" needs.
Baselines with the same call: :class:`LastFilmNet` (the last real film only) and :class:`MeanFeaturesNet` (the
mean of the real films' features).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def _real_mask(lengths: Tensor, steps: int) -> Tensor:
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


class _FilmEncoder(nn.Module):
    """Per-film projection of the frozen features, with the time inputs appended."""

    def __init__(self, n_features: int, proj: int, dropout: float, time_inputs: bool):
        super().__init__()
        # per-dimension standardisation of the frozen features, fitted on the training films (``set_scaling``)
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.proj = nn.Sequential(nn.Linear(n_features, proj), nn.ReLU(), nn.Dropout(dropout))
        self.time_inputs = time_inputs
        self.out_features = proj + (2 if time_inputs else 0)

    def forward(self, features: Tensor, gaps: Tensor) -> Tensor:
        x = self.proj((features - self.mean) / self.std)
        return torch.cat([x, gaps], dim=-1) if self.time_inputs else x


class SequenceNet(nn.Module):
    """Time-distributed film encoder → LSTM → one linear output read at the last real film."""

    def __init__(self, n_features: int, hidden: int = 64, proj: int = 128, dropout: float = 0.2,
                 time_inputs: bool = True):
        super().__init__()
        self.encoder = _FilmEncoder(n_features, proj, dropout, time_inputs)
        self.lstm = nn.LSTM(self.encoder.out_features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def _run(self, features: Tensor, gaps: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.encoder(features, gaps)
        packed = pack_padded_sequence(x, lengths.cpu().long(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        steps, _ = pad_packed_sequence(out, batch_first=True, total_length=features.shape[1])
        return steps, h[-1]  # h[-1]: the state after each sequence's own last real film

    def forward(self, features: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        return self.head(self._run(features, gaps, lengths)[1]).squeeze(-1)

    def per_step(self, features: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        steps, _ = self._run(features, gaps, lengths)
        out = self.head(steps).squeeze(-1)
        return out.masked_fill(~_real_mask(lengths, features.shape[1]), float("nan"))


class LastFilmNet(nn.Module):
    """Baseline: the last real film's features (and its time inputs) only."""

    def __init__(self, n_features: int, hidden: int = 64, proj: int = 128, dropout: float = 0.2,
                 time_inputs: bool = True):
        super().__init__()
        self.encoder = _FilmEncoder(n_features, proj, dropout, time_inputs)
        self.head = nn.Sequential(nn.Linear(self.encoder.out_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def per_step(self, features: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        out = self.head(self.encoder(features, gaps)).squeeze(-1)
        return out.masked_fill(~_real_mask(lengths, features.shape[1]), float("nan"))

    def forward(self, features: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        last = (lengths.long() - 1).clamp(min=0)
        rows = torch.arange(len(lengths), device=features.device)
        return self.head(self.encoder(features[rows, last], gaps[rows, last])).squeeze(-1)


class MeanFeaturesNet(nn.Module):
    """Baseline: the mean of the real films' features (order and timing ignored)."""

    def __init__(self, n_features: int, hidden: int = 64, proj: int = 128, dropout: float = 0.2,
                 time_inputs: bool = True):
        super().__init__()
        self.encoder = _FilmEncoder(n_features, proj, dropout, time_inputs=False)
        self.head = nn.Sequential(nn.Linear(self.encoder.out_features, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def _pooled(self, features: Tensor, lengths: Tensor) -> Tensor:
        mask = _real_mask(lengths, features.shape[1]).unsqueeze(-1).to(features.dtype)
        return (features * mask).cumsum(1) / mask.cumsum(1).clamp(min=1)  # running mean over real films

    def per_step(self, features: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        out = self.head(self.encoder(self._pooled(features, lengths), gaps)).squeeze(-1)
        return out.masked_fill(~_real_mask(lengths, features.shape[1]), float("nan"))

    def forward(self, features: Tensor, gaps: Tensor, lengths: Tensor) -> Tensor:
        pooled = self._pooled(features, lengths)
        rows = torch.arange(len(lengths), device=features.device)
        last = (lengths.long() - 1).clamp(min=0)
        return self.head(self.encoder(pooled[rows, last], gaps[rows, last])).squeeze(-1)


def set_scaling(model: nn.Module, films: Tensor) -> None:
    """Standardise each feature dimension with the mean / std of ``films`` ``(N, F)`` (the training films)."""
    model.encoder.mean.copy_(films.mean(0))
    if len(films) < 2:
        model.encoder.std.fill_(1.0)
        return
    std = films.std(0)
    # a dimension constant on the training films (a dead channel) stays unscaled: dividing by ~0 would blow up
    # the moment it moves (a fine-tuned CNN, an unusual test film) and saturate every unit after it
    model.encoder.std.copy_(torch.where(std > 1e-3, std, torch.ones_like(std)))


SEQUENCE_MODELS = {"lstm": SequenceNet, "last": LastFilmNet, "mean": MeanFeaturesNet}


def create_sequence_model(mode: str, n_features: int, **kwargs) -> nn.Module:
    if mode not in SEQUENCE_MODELS:
        from cxrlab.errors import ConfigError

        raise ConfigError(f"sequence model {mode!r}: expected one of {', '.join(SEQUENCE_MODELS)}")
    return SEQUENCE_MODELS[mode](n_features, **kwargs)
