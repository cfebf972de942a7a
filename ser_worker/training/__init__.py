"""Training: the CNNs on cached features (``fit``) and whole experiments that make a bundle
(``experiment``). Imports Keras: never imported by the CLI or the Celery app."""
