"""Training: what a run is asked for (``config``, Keras-free), the training set on disk
(``cache``), augmented batches (``batches``), the fit of the CNNs (``fit``) and whole experiments
that make a bundle (``experiment``). All but ``config`` import Keras: never imported by the CLI
or the Celery app."""
