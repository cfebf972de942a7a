import numpy as np

from research.encoder_report import block_columns
from ser_worker.models.encoder import embedding_size


def test_block_columns_pick_the_chosen_blocks_out_of_wider_vectors():
    width = embedding_size((6,))
    embedded = (2, 3, 4, 5, 6)
    # Each block's columns hold its own number, so the picked columns say which blocks came.
    vectors = np.repeat(np.array(embedded), width)[None, :]
    picked = vectors[:, block_columns(embedded, (3, 6))]
    assert picked.shape == (1, embedding_size((3, 6)))
    assert np.array_equal(picked[0], np.repeat([3, 6], width))
