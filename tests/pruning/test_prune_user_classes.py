"""User-preferred classes from a window of recent labels/predictions, and the shrunk head."""

import pytest
import torch
from torch import nn

from crisp.errors import CrispError, ModelError
from crisp.pruning.head import class_ids, shrink_head, to_original_classes
from crisp.pruning.user_classes import user_classes


def test_top_and_min_share_on_the_recent_window():
    obs = [9, 9, 9, 9, 0, 1, 1, 1, 2, 2, 3]  # the window of 7 drops the four 9s
    assert user_classes(obs, top=2) == [1, 9]
    assert user_classes(obs, window=7, top=2) == [1, 2]
    assert user_classes(obs, window=7, min_share=0.25) == [1, 2]
    assert user_classes(obs, window=7, min_share=0.1) == [0, 1, 2, 3]
    assert user_classes([5, 3, 3, 5], top=1) == [3]  # tie: smaller id
    logits = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 5.0, 1.0]])
    assert user_classes(logits, top=1) == [1]


@pytest.mark.parametrize("kwargs", [dict(), dict(top=1, min_share=0.5), dict(top=0), dict(min_share=1.5),
                                    dict(top=1, window=0)])
def test_bad_arguments(kwargs):
    with pytest.raises(CrispError):
        user_classes([1, 2, 2], **kwargs)
    with pytest.raises(CrispError):
        user_classes([], top=1)
    with pytest.raises(CrispError):
        user_classes(torch.tensor([0.5, 1.5]), top=1)


def test_shrink_head_keeps_rows_and_maps_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 10))
    x = torch.randn(7, 6)
    full = model(x)
    shrink_head(model, [7, 2, 4], 10)
    out = model(x)
    assert out.shape == (7, 3)
    assert torch.allclose(out, full[:, [7, 2, 4]])
    assert class_ids(model) == (7, 2, 4)
    assert torch.equal(to_original_classes(out, model), torch.tensor([7, 2, 4])[out.argmax(1)])
    assert "crisp_class_ids" in model.state_dict()
    with pytest.raises(ModelError):
        shrink_head(nn.Sequential(nn.Conv2d(1, 2, 1)), [0], 2)
