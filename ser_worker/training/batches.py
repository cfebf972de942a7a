"""Training batches read from the disk cache, with the 2D network's augmentation drawn per batch:
random crops of the stored mel image and SpecAugment masks, so every epoch sees new variants
without storing them."""

from __future__ import annotations

import keras
import numpy as np

from ser_worker.features.study import FeatureSettings
from ser_worker.labels import CNN1D, CNN2D
from ser_worker.training.cache import TrainingCache

# SpecAugment (Park et al. 2019), scaled to 128 bands x 112 frames: two masks of each kind,
# each at most ~10% of its axis, filled with 0 (= the band mean after standardisation).
FREQ_MASKS = 2
FREQ_MASK_MAX_FRACTION = 0.1
TIME_MASKS = 2
TIME_MASK_MAX_FRACTION = 0.1


class TrainingBatches(keras.utils.PyDataset):
    """Shuffled training batches read from the disk cache, with per-batch 2D augmentation.

    Order, crops and masks derive from (seed, epoch, batch index) only, so a run is
    reproducible whatever order Keras fetches batches in.
    """

    def __init__(
        self,
        cache: TrainingCache,
        model_name: str,
        settings: FeatureSettings,
        *,
        batch_size: int,
        class_weights: np.ndarray | None,
        random_crop: bool,
        spec_augment: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.model_name = model_name
        self.settings = settings
        self.batch_size = batch_size
        self.sample_weights = (
            None if class_weights is None else class_weights[cache.y].astype(np.float32)
        )
        self.random_crop = random_crop
        self.spec_augment = spec_augment
        self.seed = seed
        self.epoch = 0
        self.order = self._permutation()
        readers = {CNN1D: self._sequences, CNN2D: self._mel_windows}
        if model_name not in readers:
            raise ValueError(f"unknown model {model_name!r}; expected one of {tuple(readers)}")
        self._inputs = readers[model_name]

    def __len__(self) -> int:
        # The remainder batch is dropped (a different one each epoch after reshuffling): a batch
        # of one or two clips gives BatchNormalization useless statistics.
        return max(1, len(self.cache.y) // self.batch_size)

    def __getitem__(self, index: int):
        # Sorted indices read the memmap sequentially; order within a batch does not matter.
        ids = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        y = self.cache.y[ids]
        x = self._inputs(ids, index)
        if self.sample_weights is None:
            return x, y
        return x, y, self.sample_weights[ids]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.cache.y))

    def _sequences(self, ids: np.ndarray, index: int) -> np.ndarray:
        return np.asarray(self.cache.x1[ids])

    def _mel_windows(self, ids: np.ndarray, index: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        x = self._crop(ids, rng)
        if self.spec_augment:
            _mask(x, rng)
        return x

    def _crop(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        width, window = self.cache.width, self.settings.mel_frames
        lengths = self.cache.lengths[ids]
        # input_2d centred each clip in the stored width; a clip no longer than the window gets
        # the window centred on it (identical to input_2d at the model width), a longer one a
        # window anywhere inside its real frames.
        first = (width - lengths) // 2
        slack = np.maximum(lengths - window, 0)
        if self.random_crop:
            shift = np.floor(rng.random(len(ids)) * (slack + 1)).astype(np.int64)
        else:
            shift = slack // 2
        starts = np.where(slack > 0, first + shift, first - (window - lengths) // 2)
        block = np.asarray(self.cache.mel[ids])
        cols = starts[:, None] + np.arange(window)[None, :]
        return np.take_along_axis(block, cols[:, None, :, None], axis=2)


def _mask(x: np.ndarray, rng: np.random.Generator) -> None:
    """SpecAugment frequency and time masks, in place, drawn independently per clip."""
    batch, n_mels, n_frames, _ = x.shape
    for axis, count, fraction, size in (
        (1, FREQ_MASKS, FREQ_MASK_MAX_FRACTION, n_mels),
        (2, TIME_MASKS, TIME_MASK_MAX_FRACTION, n_frames),
    ):
        max_width = max(1, int(size * fraction))
        positions = np.arange(size)[None, :]
        shape = [batch, 1, 1, 1]
        shape[axis] = size
        for _ in range(count):
            widths = rng.integers(0, max_width + 1, size=batch)
            starts = np.floor(rng.random(batch) * (size - widths + 1)).astype(np.int64)
            masked = (positions >= starts[:, None]) & (positions < (starts + widths)[:, None])
            x *= ~masked.reshape(shape)
