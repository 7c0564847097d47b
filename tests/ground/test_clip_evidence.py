"""`blocks.ClipEvidence`, the `probe`'s clip-query score as an input, and how each model reads it.

capsule, regress and ianet add its detached embedding to their clips and train it with its own
clip cross-entropy (``evidence`` in the loss); localglobal adds it to its clips and to its
confidence logit, which its confidence cross-entropy trains. All four report it as saliency
(localglobal through its confidence). docs/models.md says why.
"""

from __future__ import annotations

import pytest
import torch
from test_capsule import tiny_capsule
from test_ianet import tiny_ianet
from test_localglobal import tiny_localglobal
from test_regress import tiny_regress
from test_span import TEXT_DIM, VIDEO_DIM, make_batch

from ground.models.blocks import ClipEvidence
from ground.models.probe import ProbeNet

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

WITH_OWN_LOSS = {"capsule": tiny_capsule, "regress": tiny_regress, "ianet": tiny_ianet}


def test_clip_evidence_is_the_probes_score_and_its_embedding_is_detached() -> None:
    torch.manual_seed(0)
    batch = make_batch([6, 4, 5], seed=1)
    evidence = ClipEvidence(VIDEO_DIM, TEXT_DIM, hidden_dim=8)
    probe = ProbeNet(VIDEO_DIM, TEXT_DIM)
    with torch.no_grad():
        evidence.bilinear.copy_(probe.bilinear)
        evidence.linear.copy_(probe.linear)
        evidence.bias.copy_(probe.bias + 0.5)
        probe.bias.add_(0.5)
    scores = evidence(batch["video"], batch["video_mask"], batch["text"], batch["text_mask"])
    torch.testing.assert_close(scores, probe(batch)["logits"])
    embedded = evidence.embed(scores, batch["video_mask"])  # (B, T, 8)
    assert embedded.shape == (3, 6, 8) and (embedded[1, 4:] == 0).all()
    embedded.sum().backward()  # the embedding is detached from the score
    assert evidence.bilinear.grad is None and evidence.embedding.weight.grad is not None


def _perturb(evidence: ClipEvidence) -> None:
    """The parameters start at zero (a constant score); give the score something to say."""
    with torch.no_grad():
        evidence.bilinear.normal_(0.0, 0.5)
        evidence.linear.normal_(0.0, 0.5)


@pytest.mark.parametrize("name", sorted(WITH_OWN_LOSS))
def test_models_read_the_evidence_and_train_it_with_its_own_loss(name: str) -> None:
    batch = make_batch([6, 4, 5], seed=1)
    model = WITH_OWN_LOSS[name]()
    _perturb(model.evidence)
    output = model(batch)
    scores = model.evidence(batch["video"], batch["video_mask"], batch["text"], batch["text_mask"])
    torch.testing.assert_close(output["saliency"], scores)
    assert output["saliency"].shape == (3, 6) and torch.isneginf(output["saliency"][1, 4:]).all()
    parts = model.loss(output, batch)
    assert parts["evidence"].item() == pytest.approx(ClipEvidence.loss(output["saliency"], batch).item())
    parts["loss"].backward()
    assert model.evidence.bilinear.grad.abs().sum() > 0
    assert model.evidence.embedding.weight.grad.abs().sum() > 0
    assert model.decode(output, batch, 2).saliency is output["saliency"]
    plain = WITH_OWN_LOSS[name](clip_evidence=False)
    assert plain.evidence is None
    assert "saliency" not in plain(batch) and "evidence" not in plain.loss(plain(batch), batch)


def test_localglobal_adds_the_evidence_to_its_confidence() -> None:
    batch = make_batch([6, 4, 5], seed=1)
    model = tiny_localglobal().eval()
    _perturb(model.evidence)
    real = batch["video_mask"]
    with torch.no_grad():
        model.evidence.embedding.weight.zero_()  # the clips then see no score: only the logit does
        with_score = model(batch)["confidence_logits"]
        scores = model.evidence(batch["video"], real, batch["text"], batch["text_mask"])
        model.evidence.bilinear.zero_()
        model.evidence.linear.zero_()
        without = model(batch)["confidence_logits"]
    torch.testing.assert_close(with_score[real] - without[real], scores[real], atol=1e-5, rtol=0.0)
    assert torch.isneginf(with_score[~real]).all()

    model = tiny_localglobal()
    _perturb(model.evidence)
    output = model(batch)
    model.loss(output, batch)["loss"].backward()
    assert model.evidence.bilinear.grad.abs().sum() > 0, "the confidence cross-entropy trains the score"
    assert model.evidence.embedding.weight.grad.abs().sum() > 0, "the clips read the score"
    assert tiny_localglobal(clip_evidence=False).evidence is None


@pytest.mark.parametrize("name", sorted([*WITH_OWN_LOSS, "localglobal"]))
def test_evidence_options_are_checked(name: str) -> None:
    build = WITH_OWN_LOSS.get(name, tiny_localglobal)
    with pytest.raises(ValueError, match=f"{name}: clip_evidence must be true or false, got 'maybe'"):
        build(clip_evidence="maybe")
    if name != "localglobal":  # localglobal's evidence is trained by its confidence loss: no weight
        with pytest.raises(ValueError, match="evidence_weight must be a number >= 0, got -1"):
            build(evidence_weight=-1.0)
