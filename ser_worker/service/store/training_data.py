"""Which clips a model version learnt from, so a result can say when its score is no test.

Two rules, read from the version's manifest:

- ``training_data.sha256``, when present: the content hashes of the clips the members were fitted
  on (train and validation sides). Exact, for the very bytes; a re-encoded copy of the same
  recording is not recognised.
- otherwise (the shipped bundle, and versions made before hashes were recorded): a clip whose
  file name fully matches a corpus name pattern (CREMA-D, RAVDESS, TESS: the strict patterns of
  ``ser_worker.datasets``), carries one of the six classes, and names a speaker the manifest's
  ``split`` lists on its training or validation side but not on its test side. The shipped
  bundle was fitted on every such clip of its corpora, so this catches any copy of them, WAV or
  FLAC, whatever folder it sits in. It misses a training clip that was renamed, and flags a
  different recording that happens to be named like a corpus clip of a training speaker. A
  random split puts speakers on both sides, so it flags nothing by name.
"""

from collections.abc import Mapping
from typing import Any

from ser_worker.datasets.names import label_for_path


class TrainingClips:
    """The training data of one version, from its manifest."""

    def __init__(self, manifest: Mapping[str, Any] | None) -> None:
        manifest = manifest or {}
        training = manifest.get("training_data") or {}
        self.sha256s = frozenset(training.get("sha256") or ())
        split = manifest.get("split") or {}
        learnt = set(split.get("train_speakers") or ()) | set(split.get("val_speakers") or ())
        self.speakers = frozenset(learnt - set(split.get("test_speakers") or ()))

    def __contains__(self, clip: tuple[str, str | None]) -> bool:
        """``(file name, sha256) in training_clips``."""
        filename, sha256 = clip
        if self.sha256s:
            return sha256 in self.sha256s
        if not self.speakers:
            return False
        label = label_for_path(filename, "auto")
        return label.emotion is not None and label.speaker in self.speakers
