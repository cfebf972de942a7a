"""Everything that knows SQL or Celery: the database, the store, the worker runtime, the Celery
app and its tasks. Stages below it (audio, features, models, bundle) know nothing of it."""
