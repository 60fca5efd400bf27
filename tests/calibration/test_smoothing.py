"""SmoothQuant folded into constants: where it folds, that fp32 results stay, that it evens out outlier channels."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from rmeeto_export.calibration import calibrate, linear_layers, load_cache, quantize
from rmeeto_export.calibration.smoothing import fold_sites, smooth, smoothing_factors
from rmeeto_export.errors import UserError
from rmeeto_export.export import export_onnx
from rmeeto_export.export.parity import run_onnx
from tests.support.models import TINY_VIM, tiny_vim

KINDS = ["plugin", "portable"]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


@pytest.mark.parametrize("kind", KINDS)
def test_in_proj_and_out_proj_fold_into_existing_constants(fp32_graphs, kind):
    model = onnx.load(fp32_graphs[kind])
    layers = linear_layers(model)
    sites = fold_sites(model, layers)
    depth = TINY_VIM["depth"]
    assert sorted(site.layer.role for site in sites.values()) == ["in_proj"] * depth + ["out_proj"] * depth
    producers = {model.graph.node[site.producer].op_type for site in sites.values()}
    assert producers == {"Mul", "Div"}  # the norm weight; the average of the two scan directions


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_factors_split_each_channel_range_between_activation_and_weight(alpha):
    rng = np.random.default_rng(0)
    activation, weight = rng.uniform(0.1, 50, 16), rng.uniform(0.01, 2, 16)
    s = smoothing_factors(activation, weight, alpha).astype(np.float64)
    # After smoothing, channel j's ranges are a_j / s_j and w_j * s_j; their product is unchanged and
    # alpha sets the split: 1 flattens the activations, 0 the weights, 0.5 makes the two equal.
    assert np.allclose((activation / s) * (weight * s), activation * weight)
    if alpha == 1.0:
        assert np.allclose(activation / s, 1.0, rtol=1e-6)
    elif alpha == 0.0:
        assert np.allclose(weight * s, 1.0, rtol=1e-6)
    else:
        assert np.allclose(activation / s, weight * s, rtol=1e-6)


def test_factors_stay_finite_for_dead_channels():
    s = smoothing_factors(np.array([0.0, 1.0]), np.array([1.0, 0.0]), 0.5)
    assert np.all(np.isfinite(s)) and np.all(s > 0)


@pytest.mark.parametrize("kind", KINDS)
def test_smoothed_fp32_graph_computes_the_same_logits(fp32_graphs, image_batch, kind, tmp_path):
    model = onnx.load(fp32_graphs[kind])
    layers = linear_layers(model)
    rng = np.random.default_rng(1)
    factors = {name: (10.0 ** rng.uniform(-1, 1, load_weight_rows(model, site))).astype(np.float32)
               for name, site in fold_sites(model, layers).items()}
    smoothed = smooth(model, layers, factors)
    changed = [site.layer.weight for site in fold_sites(model, layers).values()]
    before, after = initializers(model), initializers(smoothed)
    assert all(not np.allclose(before[name], after[name]) for name in changed)
    onnx.checker.check_model(smoothed, full_check=True)
    onnx.save(smoothed, str(tmp_path / "smoothed.onnx"))
    expected, _ = run_onnx(fp32_graphs[kind], image_batch.numpy())
    actual, _ = run_onnx(tmp_path / "smoothed.onnx", image_batch.numpy())
    # Exact in real arithmetic; fp32 rounds x / s and s * w differently (factors span 100x): a few ulps per layer.
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def load_weight_rows(model: onnx.ModelProto, site) -> int:
    """Input channels of the site's layer."""
    weight = next(init for init in model.graph.initializer if init.name == site.layer.weight)
    return weight.dims[1 - site.layer.channel_axis]


def test_cache_holds_factors_for_every_fold_site(fp32_graphs, cache_path):
    cache = load_cache(cache_path)
    model = onnx.load(fp32_graphs["plugin"])
    sites = fold_sites(model, linear_layers(model))
    assert set(cache.smoothing) == set(sites) and set(cache.smoothing) <= set(cache.amax)
    assert cache.settings.smoothing_alpha == 0.5
    for name, factors in cache.smoothing.items():
        assert len(factors) == load_weight_rows(model, sites[name]) and min(factors) > 0


def test_the_merge_metric_layer_keeps_its_exported_weights(fp32_graphs, int8_graphs):
    """Smoothing goes only where Q/DQ go: the float out_proj the merge matches on is left as exported."""
    fp32, int8 = onnx.load(fp32_graphs["plugin"]), onnx.load(int8_graphs["plugin"])
    before, after = initializers(fp32), initializers(int8)
    for layer in linear_layers(fp32):
        if layer.feeds_merge:
            assert np.array_equal(after[layer.weight], before[layer.weight])
        elif layer.role == "in_proj":
            assert not np.array_equal(after[layer.weight], before[layer.weight])


def test_a_cache_that_smooths_an_unfoldable_tensor_is_refused(fp32_graphs):
    model = onnx.load(fp32_graphs["plugin"])
    layers = linear_layers(model)
    x_proj = next(layer for layer in layers if layer.role == "x_proj")
    with pytest.raises(UserError, match="cannot fold"):
        smooth(model, layers, {x_proj.activation: np.ones(64, np.float32)})


def outputs_of(path, nodes: set[str], images: np.ndarray) -> np.ndarray:
    """The outputs of `nodes`, flattened (a MatMul keeps its output name when Q/DQ go on its inputs)."""
    model = onnx.load(path)
    names = [node.output[0] for node in model.graph.node if node.name in nodes]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([np.ravel(value) for value in session.run(names, {"images": images})])


def test_smoothing_evens_out_an_outlier_channel(image_folder, image_batch, tmp_path):
    """One norm channel 30x larger (the in_proj columns 30x smaller: the same fp32 model) squeezes every
    other channel of in_proj's input into a few int8 levels; smoothing gives that range back."""
    model = tiny_vim()
    with torch.no_grad():
        for block in model.layers:
            block.norm.weight[3] *= 30
            block.mixer.in_proj.weight[:, 3] /= 30
    fp32 = export_onnx(model, tmp_path / "model.onnx")
    in_proj = {layer.node for layer in linear_layers(onnx.load(fp32)) if layer.role == "in_proj"}
    images = image_batch[:1].numpy()
    expected = outputs_of(fp32, in_proj, images)
    errors = {}
    for alpha in (None, 0.5):
        cache = tmp_path / f"cache-{alpha}.json"
        calibrate(fp32, cache, str(image_folder), 12, "max", smoothing_alpha=alpha)
        actual = outputs_of(quantize(fp32, cache, tmp_path / f"int8-{alpha}.onnx"), in_proj, images)
        errors[alpha] = np.abs(actual - expected).mean() / np.abs(expected).mean()
    assert errors[0.5] < errors[None] / 4, errors  # measured: 0.166 -> 0.009 of the outputs' mean |value|


def test_max_ranges_are_those_of_the_smoothed_activations(fp32_graphs, image_folder, image_batch, tmp_path):
    """Max ranges come from the per-channel pass as max_j(max|x_j| / s_j): the smoothed graph must see exactly that."""
    cache_file = tmp_path / "max.json"
    calibrate(fp32_graphs["plugin"], cache_file, str(image_folder), len(image_batch), "max")
    cache = load_cache(cache_file)
    model = onnx.load(fp32_graphs["plugin"])
    layers = linear_layers(model)
    smoothed = smooth(model, layers, {name: np.array(f, np.float32) for name, f in cache.smoothing.items()})
    names = sorted(cache.amax)
    smoothed.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = ort.InferenceSession(smoothed.SerializeToString(), providers=["CPUExecutionProvider"])
    observed = dict.fromkeys(names, 0.0)
    for image in image_batch.numpy():
        for name, value in zip(names, session.run(names, {"images": image[None]})):
            observed[name] = max(observed[name], float(np.abs(value).max()))
    assert cache.smoothing  # the smoothed tensors are among those checked
    for name in names:
        assert cache.amax[name] == pytest.approx(observed[name], rel=1e-6)  # x / s rounds once in the graph
