"""Fisher-mask pruning's calibration labels: checked against the model's classes (or vocabulary)
before any pass, so a bad label is named instead of failing inside the loss."""
import copy

import pytest
import torch

from tcomp_utils import capture
from tcomp_utils.registry import compress, method_config
from conftest import tiny_bert, tiny_llama, tiny_t5


def _unchanged(model, state) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(v, now[k]) for k, v in state.items())


def test_a_class_label_out_of_range_is_named_before_anything_changes():
    """`IndexError: Target 5 is out of bounds` from inside the loss is now a ValueError naming the
    label and the allowed range, raised before any pass or change."""
    torch.manual_seed(0)
    model = tiny_bert()  # 2 labels
    state = copy.deepcopy(model.state_dict())
    batches = [{"input_ids": torch.randint(0, 100, (2, 8)), "labels": torch.tensor([0, 1])},
               {"input_ids": torch.randint(0, 100, (2, 8)), "labels": torch.tensor([0, 5])}]
    with pytest.raises(ValueError, match=r"calibration batch 1: label 5 is out of range: labels must be "
                                         r"BertForSequenceClassification's 2 labels \(config.num_labels\), 0\.\.1"):
        compress(model, method_config("fisher_pruning", mu=0.7), batches, progress=False)
    assert _unchanged(model, state)


def test_a_language_models_labels_must_be_token_ids_of_its_vocabulary():
    torch.manual_seed(0)
    model = tiny_llama()  # vocabulary of 100
    state = copy.deepcopy(model.state_dict())
    ids = torch.randint(0, 100, (2, 8))
    labels = ids.clone()
    labels[0, 0], labels[1, 3] = -100, 100  # -100: an ignored position; 100: past the vocabulary
    with pytest.raises(ValueError, match=r"label 100 is out of range: labels must be token ids of LlamaForCausalLM's "
                                         r"vocabulary, 0\.\.99"):
        compress(model, method_config("fisher_pruning", mu=0.7), [{"input_ids": ids, "labels": labels}],
                 progress=False)
    assert _unchanged(model, state)


def test_labels_that_the_loss_accepts_pass_the_check():
    """-100 (ignored positions), a seq2seq LM's token labels, regression targets: all accepted."""
    ids = torch.randint(0, 100, (2, 8))
    capture.check_labels(tiny_bert(), [{"input_ids": ids, "labels": torch.tensor([1, -100])}], "m")
    capture.check_labels(tiny_llama(), [{"input_ids": ids, "labels": ids.masked_fill(ids < 10, -100)}], "m")
    capture.check_labels(tiny_t5(), [{"input_ids": ids, "labels": ids}], "m")
    capture.check_labels(tiny_bert(num_labels=1), [{"input_ids": ids, "labels": torch.tensor([0.3, 7.0])}], "m")
