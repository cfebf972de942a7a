import json

import numpy as np

from research.encoder_report import OUT, block_columns, cnn_ensemble, cnn_run, shipped_recipe
from ser_worker.evaluation.metrics import argmax_macro_f1
from ser_worker.labels import CNN1D, CNN2D
from ser_worker.models.encoder import embedding_size


def test_block_columns_pick_the_chosen_blocks_out_of_wider_vectors():
    width = embedding_size((6,))
    embedded = (2, 3, 4, 5, 6)
    # Each block's columns hold its own number, so the picked columns say which blocks came.
    vectors = np.repeat(np.array(embedded), width)[None, :]
    picked = vectors[:, block_columns(embedded, (3, 6))]
    assert picked.shape == (1, embedding_size((3, 6)))
    assert np.array_equal(picked[0], np.repeat([3, 6], width))


def test_the_cnn_ensemble_of_every_encoder_row_is_the_shipped_mix_of_its_cnn_run():
    """The rows in research/results/encoder/runs.json were made with the shipped CNN weights:
    mixing each paired CNN run again through the one ensemble rule gives the recorded score."""
    rows = [row for row in json.loads(OUT.read_text()) if "cnn_ensemble" in row]
    assert len(rows) > 50
    for row in rows:
        ours = cnn_run(row["experiment"], "ours", row["seed"])
        truth = ours["probabilities"]["test"]["labels"]
        assert argmax_macro_f1(truth, cnn_ensemble(ours)["test"]) == row["cnn_ensemble"]
    assert shipped_recipe().cnn_weights == {CNN1D: 0.4, CNN2D: 0.6}
