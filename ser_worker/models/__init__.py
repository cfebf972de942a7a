"""The models of a bundle: the two study CNNs (``cnn``) and the pretrained speech encoder
(``encoder``) with its linear head."""
