"""Integrated gradients (handler/explanations.py): the midpoint rule of the path integral, computed exactly, and its
completeness on real digits within the method's measured error; what an explanation adds to an answer."""
import pytest
import torch

import train
from handler import explanations
from model import preprocessing
from model.checkpoint import load_checkpoint
from tests.support.images import png_bytes
from tests.support.tolerances import (DEFAULT_STEPS_MAX_ERROR, DEFAULT_STEPS_MEDIAN_ERROR, FINE_MAX_ERROR,
                                      FINE_STEPS)


def path_ends(artifacts, images):
    """The eager model, the network inputs of `images`, the labels it gives them and p(x) - p(black) for those."""
    model = load_checkpoint(artifacts / train.WEIGHTS_FILE)[0]
    inputs = torch.cat([preprocessing.image_bytes_to_tensor(png_bytes(image))[None] for image in images])
    with torch.inference_mode():
        probabilities = torch.softmax(model(inputs), dim=1)
        baseline = torch.softmax(model(explanations.black_baseline(inputs)), dim=1)
    targets = probabilities.argmax(dim=1)
    gap = probabilities.gather(1, targets[:, None])[:, 0] - baseline.gather(1, targets[:, None])[:, 0]
    return model, inputs, targets, gap


def completeness_error(model, inputs, targets, gap, steps: int) -> torch.Tensor:
    return (explanations.integrated_gradients(model, inputs, targets, steps=steps).sum(dim=(1, 2)) - gap).abs()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch.func's own import
def test_integrated_gradients_are_the_midpoint_rule_of_the_path_integral(artifacts, test_split):
    """Summed attributions = the mean of d p_label(x' + a (x - x')) / da over the midpoints a, the derivative taken
    here by forward-mode AD (torch.func.jvp), apart from the reverse-mode code under test: exact for any weights."""
    model, inputs, targets, _ = path_ends(artifacts, test_split[0][:8])
    baseline = explanations.black_baseline(inputs)
    direction = inputs - baseline

    def probability(point):
        return torch.softmax(model(point), dim=1).gather(1, targets[:, None])[:, 0]

    steps = explanations.DEFAULT_STEPS
    derivatives = [torch.func.jvp(probability, (baseline + (k + 0.5) / steps * direction,), (direction,))[1]
                   for k in range(steps)]
    riemann = torch.stack(derivatives).mean(dim=0).detach()
    attributions = explanations.integrated_gradients(model, inputs, targets, steps=steps)
    torch.testing.assert_close(attributions.sum(dim=(1, 2)), riemann, atol=1e-5, rtol=1e-4)


def test_integrated_gradients_are_complete_on_real_digits(artifacts, test_split):
    """Summed attributions approach p(x) - p(baseline) for the label (completeness) as the steps grow, and at the
    shipped 32 steps lie within the method's measured error (tests/support/tolerances.py); a single step (gradient x
    input) does not: the test can tell the two apart."""
    model, inputs, targets, gap = path_ends(artifacts, test_split[0][:64])
    error = completeness_error(model, inputs, targets, gap, explanations.DEFAULT_STEPS)
    assert float(error.median()) <= DEFAULT_STEPS_MEDIAN_ERROR and float(error.max()) <= DEFAULT_STEPS_MAX_ERROR, \
        (float(error.median()), float(error.max()))
    fine = completeness_error(model, inputs[:8], targets[:8], gap[:8], FINE_STEPS)
    assert float(fine.max()) <= FINE_MAX_ERROR, fine
    crude = completeness_error(model, inputs, targets, gap, 1)
    assert float(crude.median()) > DEFAULT_STEPS_MEDIAN_ERROR and float(crude.max()) > DEFAULT_STEPS_MAX_ERROR, \
        (float(crude.median()), float(crude.max()))


class Linear(torch.nn.Module):
    """Logits linear in the pixels: p(label) along the path has a closed form to check the sum against."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.weights = weights  # classes x 784

    def forward(self, inputs):
        return inputs.reshape(len(inputs), -1) @ self.weights.T


def test_integrated_gradients_of_a_model_with_known_gradients():
    """Two classes, logits w . x: p_0 = sigmoid((w0 - w1) . x). A pixel no weight reads gets nothing; the sum tends
    to p(x) - p(baseline); attributions are zero where the input equals the baseline."""
    torch.manual_seed(0)
    weights = torch.zeros(2, 784)
    weights[0, :392] = 0.05  # class 0 reads the top half
    model = Linear(weights)
    inputs = torch.rand(3, 1, 28, 28) * 2
    inputs[2] = explanations.black_baseline(inputs[2:])  # an all-black frame
    targets = torch.zeros(3, dtype=torch.long)
    attributions = explanations.integrated_gradients(model, inputs, targets, steps=256)
    assert attributions.shape == (3, 28, 28)
    assert attributions[:, 14:].abs().max() == 0  # the bottom half changes no logit
    assert attributions[2].abs().max() == 0
    with torch.no_grad():
        gap = torch.softmax(model(inputs), 1)[:, 0] - torch.softmax(model(explanations.black_baseline(inputs)), 1)[:, 0]
    torch.testing.assert_close(attributions.sum(dim=(1, 2)), gap, atol=1e-5, rtol=1e-4)
    assert (attributions[:2, :14] > 0).float().mean() > 0.99  # ink above the baseline only raised p_0


def test_the_baseline_is_black_and_the_view_is_what_the_model_saw():
    frames = torch.rand(2, 28, 28)
    inputs = preprocessing.normalize(frames)  # 2 x 1 x 28 x 28
    black = explanations.black_baseline(inputs)
    assert black.shape == inputs.shape
    torch.testing.assert_close(black, preprocessing.normalize(torch.zeros(2, 28, 28)))
    torch.testing.assert_close(explanations.model_view(black), torch.zeros(2, 28, 28))
    torch.testing.assert_close(explanations.model_view(inputs), frames, atol=1e-6, rtol=0)
    bright = torch.full((1, 1, 28, 28), 100.0)
    assert explanations.model_view(bright).max() == 1.0  # clamped to pixel values


def test_explanation_fields_are_what_an_answer_adds():
    attributions = torch.full((2, 28, 28), 0.1234567891)
    frames = torch.full((2, 28, 28), 0.987654321)
    fields = explanations.explanation_fields(attributions, frames)
    assert len(fields) == 2 and set(fields[0]) == {"image", "attributions", "method", "steps", "baseline"}
    assert fields[0]["method"] == explanations.METHOD == "integrated_gradients"
    assert fields[0]["steps"] == explanations.DEFAULT_STEPS and fields[0]["baseline"] == "black"
    assert fields[1]["image"][5][7] == 0.9877 and fields[1]["attributions"][27][0] == 0.123457  # 4 and 6 digits
    assert len(fields[0]["image"]) == 28 and all(len(row) == 28 for row in fields[0]["attributions"])
    assert explanations.explanation_fields(attributions, frames, steps=8)[0]["steps"] == 8
