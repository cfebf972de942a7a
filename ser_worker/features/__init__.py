"""The study's features of a waveform and its training augmentations: pure functions of
(signal, settings), no model, no service."""
