"""Bad input raises ValueError/TypeError naming the layer, the argument and the shapes."""
import numpy as np
import pytest

import array_api_strict
from minilora import MLP, backend
from minilora import functional as F
from minilora.nn import Linear, LoRALinear

x34 = np.ones((3, 4), "float32")
W54 = np.ones((5, 4), "float32")


def test_mismatched_shapes_name_the_layer_and_shapes():
    with pytest.raises(ValueError, match=r"linear: x has shape \(3, 6\) but W has shape \(5, 4\)"):
        F.linear_forward(np.ones((3, 6), "float32"), W54)
    with pytest.raises(ValueError, match=r"b has shape \(4,\), expected \(d_out,\) = \(5,\)"):
        F.linear_forward(x34, W54, np.ones(4, "float32"))
    with pytest.raises(ValueError, match=r"fc1: expected A \(r, d_in\).*got A \(2, 3\) and B \(5, 2\)"):
        F.lora_forward(x34, W54, None, np.ones((2, 3), "float32"), np.ones((5, 2), "float32"), 1.0, layer="fc1")
    with pytest.raises(ValueError, match=r"fc1: x has shape \(2, 7\)"):
        MLP((4, 3, 2)).add_lora(r=1, alpha=1).forward(np.ones((2, 7), "float32"))


@pytest.mark.parametrize("r", [0, -1, 5])
def test_rank_out_of_range(r):
    with pytest.raises(ValueError, match=rf"fc1: r = {r} must satisfy 1 <= r <= min\(d_in, d_out\) = min\(4, 5\) = 4"):
        MLP((4, 5, 2)).add_lora(["fc1"], r=r, alpha=1)


def test_rank_must_be_an_int():
    with pytest.raises(TypeError, match="r must be an int"):
        MLP((4, 5, 2)).add_lora(["fc1"], r=2.0, alpha=1)


@pytest.mark.parametrize("alpha", [0, -2.0, float("nan")])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError, match="fc2: alpha must be a positive number"):
        MLP((4, 5, 2)).add_lora(["fc2"], r=1, alpha=alpha)


def test_failed_add_lora_leaves_the_model_unchanged():
    m = MLP((4, 5, 2))
    with pytest.raises(ValueError):
        m.add_lora(["fc1", "fc2"], r={"fc1": 1, "fc2": 3}, alpha=1)  # fc2: 3 > min(5, 2)
    assert m.lora_layers() == {} and m.num_parameters(trainable=True) == m.num_parameters()


@pytest.mark.parametrize("dtype", ["int64", "bool", "complex128"])
def test_non_float_arrays_are_refused(dtype):
    bad = np.ones((3, 4), dtype=dtype)
    with pytest.raises(TypeError, match=rf"linear: argument 'x' must be a floating array.*got dtype {dtype} with shape \(3, 4\)"):
        F.linear_forward(bad, W54)
    with pytest.raises(TypeError, match=rf"fc1: argument 'x' must be a floating array.*{dtype}"):
        MLP((4, 5, 2)).add_lora(r=1, alpha=1).forward(bad)


def test_mixed_dtypes_are_refused():
    with pytest.raises(TypeError, match="linear: arrays must share one dtype, got x: float64, W: float32"):
        F.linear_forward(np.ones((3, 4)), W54)


def test_arrays_from_two_backends_are_refused():
    strict_x = array_api_strict.asarray(x34)
    with pytest.raises(TypeError, match="arrays from two backends mixed"):
        F.linear_forward(strict_x, W54)
    with pytest.raises(TypeError, match="arrays from two backends mixed"):
        MLP((4, 5, 2)).forward(strict_x)


def test_unknown_layer_names_for_lora():
    with pytest.raises(ValueError, match=r"MLP: unknown LoRA target 'fc9'; layers are \['fc1', 'fc2'\]"):
        MLP((4, 5, 2)).add_lora(["fc1", "fc9"], r=1, alpha=1)


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="Linear: d_in must be a positive int"):
        Linear(0, 3)
    with pytest.raises(ValueError, match="activation must be one of"):
        MLP((3, 2), activation="tanh")
    layer = LoRALinear(Linear(4, 4))
    with pytest.raises(ValueError, match="dropout must lie in"):
        layer.add_adapter("a", r=1, alpha=1, dropout=1.0)
    with pytest.raises(ValueError, match="init must be one of"):
        layer.add_adapter("a", r=1, alpha=1, init="zeros")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        MLP((3, 2)).to("tpu")


def test_loss_inputs_are_checked():
    with pytest.raises(ValueError, match=r"target ids must lie in \[0, 3\)"):
        F.softmax_cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="targets must be integer class ids"):
        F.softmax_cross_entropy_forward(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"mse: pred \(2, 3\) and target \(3, 2\)"):
        F.mse_forward(np.zeros((2, 3)), np.zeros((3, 2)))


def test_namespace_rejects_non_arrays():
    with pytest.raises(TypeError, match="expected an array"):
        backend.namespace([1.0, 2.0])


@pytest.mark.parametrize("bad", [dict(init="zeros"), dict(dropout=1.0), dict(adapter="a.b"), dict(dropout=-0.1)])
def test_failed_add_lora_with_bad_options_leaves_the_model_unchanged(bad):
    m = MLP((4, 6, 3))
    before = {k: v.copy() for k, v in m.named_parameters().items()}
    with pytest.raises(ValueError, match="fc1: (init|dropout|adapter name)"):
        m.add_lora(["fc1", "fc2"], r=2, alpha=4, **bad)
    assert m.lora_layers() == {} and m.num_parameters(trainable=True) == m.num_parameters()
    assert all(np.array_equal(v, before[k]) for k, v in m.named_parameters().items())


def test_a_plain_linear_inside_a_model_names_its_path():
    m = MLP((8, 16, 3)).add_lora(["fc2"], r=1, alpha=1)
    with pytest.raises(ValueError, match=r"^fc1: x has shape \(2, 5\) but W has shape \(16, 8\)"):
        m.forward(np.ones((2, 5), "float32"))
    with pytest.raises(TypeError, match="^fc1: arrays must share one dtype"):
        m.forward(np.ones((2, 8)))


def test_dropout_mask_must_match_the_dtype():
    x = np.ones((3, 4), "float32")
    A, B = np.ones((2, 4), "float32"), np.ones((5, 2), "float32")
    with pytest.raises(TypeError, match="fc1: arrays must share one dtype.*mask: float64"):
        F.lora_forward(x, W54, None, A, B, 1.0, mask=np.ones((3, 4)), layer="fc1")
