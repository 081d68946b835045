"""distill-finetune: lowers the KL to the teacher, never violates masks, keeps quantized records exact, resumes."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny graphs: one thread is fastest on a shared machine

from evonnx.formats.tensor import dequantize  # noqa: E402
from evonnx.passes.base import PassContext, get_pass  # noqa: E402
from evonnx.passes.distill_finetune import DistillFinetune  # noqa: E402
from evonnx.passes.engine.calib import CalibData  # noqa: E402
from evonnx.passes.state import load_state  # noqa: E402
from evonnx.errors import EvonnxError  # noqa: E402
from evonnx.passes.torchnet import distill, torch_device  # noqa: E402


def mlp_state(seed=0, d_in=16, hidden=48, classes=6):
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((hidden, d_in)) / np.sqrt(d_in)).astype(np.float32)
    w2 = (rng.standard_normal((classes, hidden)) * 2 / np.sqrt(hidden)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.full(hidden, 0.1, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(classes, np.float32), "b2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d_in])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    calib = CalibData({"x": rng.standard_normal((256, d_in)).astype(np.float32)}, None, "test")
    return load_state(model.SerializeToString()), calib


def ctx_for(calib, workdir=None, device="cpu"):
    return PassContext(calib, device=device, progress=False, workdir=workdir)


FAST = dict(steps=200, batch_size=64, lr=3e-3, eval_every=40, holdout=0.0)


def assert_masks_hold(before, after):
    for name, mask in before.masks.items():
        assert after.masks[name].tobytes() == mask.tobytes(), name
        assert not np.any(after.current(name)[~mask]), f"{name}: a pruned entry came back"


def test_finetune_lowers_kl_to_teacher_and_keeps_masks():
    state, calib = mlp_state()
    ctx = ctx_for(calib)
    pruned = get_pass("magnitude")(sparsity=0.8, refit=False).run(state, ctx)
    out = get_pass("distill-finetune")(**FAST).run(pruned, ctx)
    rec = out.history[-1]
    engine = ctx.engine(state)
    before, after = engine.fitness([{n: pruned.current(n) for n in engine.weight_names},
                                    {n: out.current(n) for n in engine.weight_names}])
    assert rec["fitness"] == pytest.approx(after) and rec["fitness_before"] == pytest.approx(before)
    assert after < 0.5 * before, (before, after)
    assert_masks_hold(pruned, out)
    assert out.global_sparsity() == pytest.approx(pruned.global_sparsity())
    assert "b1" in rec["trained"] and not np.array_equal(out.current("b1"), pruned.current("b1"))


@pytest.mark.parametrize("trainable, nontarget", [("targets", "exact"), ("all", "int8")])
def test_frozen_weights_train_at_their_current_values(trainable, nontarget):
    """Weights the fine-tune does not train (biases with trainable=targets, rounded non-target records) enter
    the student as they are now, not as in the model file: with a zero learning rate nothing changes."""
    state, calib = mlp_state(2)
    ctx = ctx_for(calib)
    pruned = get_pass("magnitude")(sparsity=0.7).run(state, ctx)  # the re-fit changes the biases
    assert not np.array_equal(pruned.current("b1"), state.current("b1"))
    quant = get_pass("quantize")(bits=4, min_size=0, nontarget=nontarget).run(pruned, ctx)
    out = get_pass("distill-finetune")(**{**FAST, "steps": 5, "lr": 0.0}, trainable=trainable).run(quant, ctx)
    engine = ctx.engine(state)
    start, end = engine.fitness([{n: quant.current(n) for n in engine.weight_names},
                                 {n: out.current(n) for n in engine.weight_names}])
    assert out.history[-1]["val_kl_before"] == pytest.approx(start, rel=1e-4)
    assert end == pytest.approx(start, rel=1e-6)


@pytest.mark.parametrize("scheme, mode", [("uniform/channel/sym", "ste"), ("codebook", "ste"),
                                          ("uniform/tensor/asym", "requantize")])
def test_after_quantization_weights_equal_their_records(scheme, mode):
    state, calib = mlp_state(1)
    ctx = ctx_for(calib)
    pruned = get_pass("magnitude")(sparsity=0.7, refit=False).run(state, ctx)
    quant = get_pass("quantize")(scheme=scheme, bits=3, min_size=0).run(pruned, ctx)
    out = get_pass("distill-finetune")(**{**FAST, "steps": 60}, quant_mode=mode).run(quant, ctx)
    assert sorted(out.quant) == sorted(quant.quant)
    for name, record in out.quant.items():
        old = quant.quant[name]
        assert (record.scheme, record.bits) == (old.scheme, old.bits)
        assert out.weights[name].tobytes() == dequantize(record).tobytes(), name
    assert_masks_hold(pruned, out)
    changed = [n for n in out.quant if not np.array_equal(out.weights[n], quant.weights[n])]
    assert changed, "training changed no quantized weight"
    assert out.history[-1]["fitness"] <= quant.history[-1]["after"]["fitness"] * 1.05


def crash_and_resume(cfg: dict, pruned, calib, workdir, crash_at: int, device: str = "cpu"):
    """(uninterrupted run, run killed at step `crash_at` then resumed from `workdir`), asserting both
    trained the same weights bit for bit along the same validation curve."""
    straight = get_pass("distill-finetune")(**cfg).run(pruned, ctx_for(calib, device=device))
    real_step, calls = distill.Distiller.train_step, []

    def crashing_step(self):
        calls.append(self.step)
        if self.step == crash_at:
            raise KeyboardInterrupt
        return real_step(self)

    distill.Distiller.train_step = crashing_step
    try:
        with pytest.raises(KeyboardInterrupt):
            get_pass("distill-finetune")(**cfg).run(pruned, ctx_for(calib, workdir, device))
    finally:
        distill.Distiller.train_step = real_step
    assert (workdir / "distill-finetune" / "checkpoint.npz").is_file() and crash_at in calls
    resumed = get_pass("distill-finetune")(**cfg).run(pruned, ctx_for(calib, workdir, device))
    for name in straight.history[-1]["trained"]:
        assert resumed.weights[name].tobytes() == straight.weights[name].tobytes(), name
    assert resumed.history[-1]["curve"] == straight.history[-1]["curve"]
    return straight, resumed


def test_resume_continues_bit_identically(tmp_path):
    state, calib = mlp_state(2)
    pruned = get_pass("magnitude")(sparsity=0.8, refit=False).run(state, ctx_for(calib))
    cfg = dict(FAST, steps=60, checkpoint_every=20, eval_every=20, augment=["noise", "mixup"])
    crash_and_resume(cfg, pruned, calib, tmp_path, crash_at=30)


def test_torch_device_is_chosen_quietly_and_refused_clearly():
    assert torch_device(torch, "cpu").type == "cpu"
    assert torch_device(torch, "auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EvonnxError, match="auto, cpu or cuda"):
        torch_device(torch, "gpu")
    if not torch.cuda.is_available():
        with pytest.raises(EvonnxError, match="CUDA was requested"):
            torch_device(torch, "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no GPU here")
def test_on_cuda_masks_and_grids_hold_and_resume_is_bit_identical(tmp_path):
    """The whole loop on the GPU (device auto: torch on CUDA, the engine wherever ORT can run)."""
    state, calib = mlp_state(3)
    ctx = ctx_for(calib, device="auto")
    pruned = get_pass("magnitude")(sparsity=0.75).run(state, ctx)
    quant = get_pass("quantize")(scheme="codebook", bits=3, min_size=0).run(pruned, ctx)
    cfg = dict(FAST, steps=60, checkpoint_every=20, eval_every=20, augment=["noise", "mixup"])
    straight, _ = crash_and_resume(cfg, quant, calib, tmp_path, crash_at=30, device="auto")
    rec = straight.history[-1]
    assert rec["torch_device"] == "cuda" and rec["fitness"] < rec["fitness_before"]
    assert_masks_hold(pruned, straight)
    for name, record in straight.quant.items():
        assert straight.weights[name].tobytes() == dequantize(record).tobytes(), name


def test_shift_augmentation_moves_images_within_bounds():
    rng = np.random.default_rng(0)
    x = np.zeros((8, 1, 6, 6), np.float32)
    x[:, :, 3, 3] = 1.0
    d = distill.Distiller.__new__(distill.Distiller)
    d.s, d.rng = DistillFinetune.Config(shift=2), rng
    y = d._shift(x)
    assert y.shape == x.shape and np.all(y.sum(axis=(1, 2, 3)) == 1.0)
    pos = np.argwhere(y[:, 0] == 1.0)[:, 1:]
    assert np.all(np.abs(pos - 3) <= 2) and len({tuple(p) for p in pos}) > 1


def test_training_on_a_separate_data_file_validates_on_the_calibration_set(tmp_path):
    state, calib = mlp_state(3)
    pruned = get_pass("magnitude")(sparsity=0.8, refit=False).run(state, ctx_for(calib))
    data = tmp_path / "train.npz"
    np.savez(data, x=np.random.default_rng(9).standard_normal((512, 16)).astype(np.float32))
    own = get_pass("distill-finetune")(**FAST).run(pruned, ctx_for(calib))
    extra = get_pass("distill-finetune")(**FAST, data=str(data)).run(pruned, ctx_for(calib))
    assert not np.array_equal(own.current("w1"), extra.current("w1"))  # other batches were drawn
    assert extra.history[-1]["val_kl_best"] < 0.5 * extra.history[-1]["val_kl_before"]
    assert_masks_hold(pruned, extra)
    np.savez(data, y=np.zeros((4, 16), np.float32))
    with pytest.raises(Exception, match="train.npz"):
        get_pass("distill-finetune")(**FAST, data=str(data)).run(pruned, ctx_for(calib))


def test_holdout_of_a_separate_data_file_validates_on_rows_it_does_not_train_on():
    """With `data` and `holdout`, validation leaves the calibration set (which earlier passes may have
    fitted weights to) and uses training rows the student never sees."""
    from evonnx.passes.torchnet.convert import OnnxModule
    state, calib = mlp_state(3)
    x = np.arange(100 * 16, dtype=np.float32).reshape(100, 16) / 1600
    labels = np.arange(100) % 6

    def split(holdout):
        s = DistillFinetune.Config(holdout=holdout)
        teacher, student = OnnxModule(state.model, values=state.held), OnnxModule(state.model, ["w1"], state.values())
        d = distill.Distiller(teacher, student, {}, calib.inputs, None, s, 0, None, "fp", False, train=({"x": x}, labels))
        return d.val_x["x"], d.train_x[0], d.train_y

    def rows(a):  # the row of x each sample came from
        return np.round(a[:, 0] * 100).astype(int)

    val, train, y = split(0.1)
    assert len(val) == 10 and len(train) == len(y) == 90
    assert not set(rows(val)) & set(rows(train)) and set(rows(val)) | set(rows(train)) == set(range(100))
    assert np.array_equal(y, labels[rows(train)])  # labels follow their rows
    val, train, _ = split(0.0)
    assert np.array_equal(val, calib.inputs["x"]) and np.array_equal(train, x)


def test_a_checkpoint_follows_the_data_by_content_not_by_path(tmp_path, caplog):
    """A work dir moved to another machine, where the same training file lives elsewhere, still resumes;
    other content under the same path starts afresh."""
    state, calib = mlp_state(3)
    pruned = get_pass("magnitude")(sparsity=0.8, refit=False).run(state, ctx_for(calib))
    x = np.random.default_rng(9).standard_normal((256, 16)).astype(np.float32)
    here, there = tmp_path / "a.npz", tmp_path / "b.npz"
    np.savez(here, x=x)
    np.savez(there, x=x)
    cfg = dict(FAST, steps=20, eval_every=10, checkpoint_every=10)
    work = tmp_path / "work"
    get_pass("distill-finetune")(**cfg, data=str(here)).run(pruned, ctx_for(calib, work))
    ctx = PassContext(calib, device="cpu", progress=False, workdir=work)
    caplog.set_level("INFO", logger="evonnx")
    get_pass("distill-finetune")(**cfg, data=str(there)).run(pruned, ctx)
    assert "resumed at step 20" in caplog.text
    np.savez(there, x=x[::-1].copy())
    caplog.clear()
    get_pass("distill-finetune")(**cfg, data=str(there)).run(pruned, ctx)
    assert "resumed" not in caplog.text


def test_a_pass_that_occurs_twice_in_a_pipeline_keeps_its_own_checkpoint(tmp_path, caplog):
    """Fine-tune, quantize, fine-tune on the grid: a rerun resumes both fine-tunes (one shared folder
    would hold only the second, and the first would start over)."""
    from evonnx.passes.pipeline import Pipeline
    state, calib = mlp_state(3)
    cfg = dict(FAST, steps=20, eval_every=10, checkpoint_every=10)
    steps = [("magnitude", {"sparsity": 0.8}), ("distill-finetune", cfg), ("quantize", {"bits": 4, "min_size": 0}),
             ("distill-finetune", {**cfg, "lr": 1e-3})]
    first = Pipeline(steps).run(state, ctx_for(calib, tmp_path))
    assert (tmp_path / "distill-finetune" / "checkpoint.npz").is_file()
    assert (tmp_path / "distill-finetune.2" / "checkpoint.npz").is_file()
    ctx = PassContext(calib, device="cpu", progress=False, workdir=tmp_path)
    caplog.set_level("INFO", logger="evonnx")
    again = Pipeline(steps).run(state, ctx)
    assert caplog.text.count("resumed at step 20") == 2, caplog.text
    assert ctx.folders == {}
    for name in first.weights:
        assert again.weights[name].tobytes() == first.weights[name].tobytes(), name


def test_iterative_magnitude_reaches_the_target_retrains_each_round_and_resumes(tmp_path):
    state, calib = mlp_state(4)
    ft = dict(FAST, steps=40, eval_every=20)
    out = get_pass("iterative-magnitude")(sparsity=0.9, rounds=3, finetune=ft).run(state, ctx_for(calib, tmp_path))
    rec = out.history[-1]
    assert [r["round"] for r in rec["rounds"]] == [1, 2, 3]
    spars = [r["sparsity"] for r in rec["rounds"]]
    assert spars == sorted(spars) and spars[-1] == pytest.approx(0.9, abs=1e-3)
    assert out.global_sparsity() == pytest.approx(0.9, abs=1e-3)
    assert all(r["fitness_retrained"] < r["fitness_pruned"] for r in rec["rounds"])
    one_shot = get_pass("magnitude")(sparsity=0.9, refit=False).run(state, ctx_for(calib))
    assert rec["fitness"] < one_shot.history[-1]["fitness"]
    again = get_pass("iterative-magnitude")(sparsity=0.9, rounds=3, finetune=ft).run(state, ctx_for(calib, tmp_path))
    assert again.weights["w1"].tobytes() == out.weights["w1"].tobytes()  # resumed from the round checkpoints


def test_iterative_magnitude_reaches_per_layer_targets():
    state, calib = mlp_state(5)
    ft = dict(FAST, steps=20, eval_every=10)
    out = get_pass("iterative-magnitude")(layer_sparsity={"w1": 0.9, "w2": 0.5}, scope="layer", rounds=2,
                                          finetune=ft).run(state, ctx_for(calib))
    assert out.sparsity("w1") == pytest.approx(0.9, abs=1e-3) and out.sparsity("w2") == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(Exception, match="scope must be global or layer"):
        get_pass("iterative-magnitude")(sparsity=0.5, scope="rows", finetune=ft).run(state, ctx_for(calib))


def test_regrow_moves_kept_entries_keeps_counts_and_resumes_bit_identically(tmp_path):
    state, calib = mlp_state(5)
    pruned = get_pass("magnitude")(sparsity=0.85, refit=False).run(state, ctx_for(calib))
    cfg = dict(FAST, steps=60, checkpoint_every=20, eval_every=20, regrow=0.3, regrow_every=10, regrow_until=0.8,
               keep_best=False)
    straight, resumed = crash_and_resume(cfg, pruned, calib, tmp_path, crash_at=30)
    rec = straight.history[-1]
    assert rec["regrown"] and all(k > 0 for k in rec["regrown"].values())
    for name, mask in pruned.masks.items():
        new = straight.masks[name]
        assert new.sum() == mask.sum() and not np.array_equal(new, mask), name
        assert not np.any(straight.current(name)[~new]), f"{name}: an entry outside the regrown mask is not zero"
        assert np.array_equal(resumed.masks[name], new)
    assert rec["fitness"] < rec["fitness_before"]


def test_regrow_grows_where_the_gradient_is_largest():
    from evonnx.passes.torchnet.regrow import fraction, regrow
    w = torch.tensor([[0.5, -0.1, 0.0, 0.0], [0.3, 0.0, 0.0, 2.0]])
    mask = w != 0
    grad = torch.tensor([[9.0, 9.0, 0.2, 5.0], [9.0, 0.1, 0.3, 9.0]])
    new, dropped, grown = regrow(w, grad, mask, share=0.5)  # 4 kept: move 2
    assert sorted(dropped.tolist()) == [1, 4]  # |-0.1| and |0.3|: the smallest kept
    assert sorted(grown.tolist()) == [3, 6]  # the largest gradients among the pruned (5.0, 0.3)
    assert new.sum() == mask.sum() and not new.view(-1)[dropped].any() and new.view(-1)[grown].all()
    assert fraction(0, 100, 0.3, 0.75) == pytest.approx(0.3) and fraction(75, 100, 0.3, 0.75) == 0.0


def test_option_groups_take_nested_dotted_and_flat_spellings_alike(tmp_path):
    """Weight Evolution and regrow are option groups; the flat spellings of earlier pipelines still work,
    and a pipeline file records only the changed fields of a group."""
    from evonnx.passes.compress.container import describe
    from evonnx.passes.pipeline import Pipeline
    flat = get_pass("distill-finetune")(weight_evolution=True, we_every=7, regrow=0.3, regrow_until=0.5).config
    nested = get_pass("distill-finetune")(weight_evolution={"enabled": True, "every": 7},
                                          regrow={"share": 0.3, "until": 0.5}).config
    dotted = get_pass("distill-finetune")(**{"weight_evolution.enabled": True, "weight_evolution.every": 7,
                                             "regrow.share": 0.3, "regrow.until": 0.5}).config
    assert flat == nested == dotted
    assert flat.weight_evolution.every == 7 and flat.weight_evolution.fraction == 0.2 and flat.regrow.every == 100
    toml = tmp_path / "p.toml"
    toml.write_text('[[passes]]\nname = "distill-finetune"\nregrow = {share = 0.3, until = 0.5}\n'
                    'weight_evolution = {enabled = true, every = 7}\n')
    assert describe(Pipeline.from_file(toml)) == [{"name": "distill-finetune", "weight_evolution":
                                                   {"enabled": True, "every": 7}, "regrow": {"share": 0.3, "until": 0.5}}]
    assert ("regrow.every", 100, "steps between mask updates") in DistillFinetune.describe()
    with pytest.raises(EvonnxError, match=r"regrow: unknown parameter\(s\) \['often'\]"):
        get_pass("distill-finetune")(regrow={"often": 2})
    with pytest.raises(EvonnxError, match="we_often"):
        get_pass("distill-finetune")(we_often=2)
    with pytest.raises(EvonnxError, match=r"weight_evolution: layers must be one of conv \| all, got 'dense'"):
        get_pass("distill-finetune")(we_layers="dense")  # a Literal-typed option is checked when the pass is made
    with pytest.raises(EvonnxError, match=r"nontarget must be one of auto \| exact \| fp16 \| bf16 \| int8"):
        get_pass("bit-allocation")(nontarget="int4")


def test_pads_are_neither_augmented_nor_learned():
    """Token models: the attention-mask input is never augmented (noise on an additive mask would move the
    attention), and the loss leaves out the output rows at pads, which no metric reads."""
    from evonnx.passes.torchnet.convert import OnnxModule
    rng = np.random.default_rng(0)
    n, t, d = 8, 5, 4
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "m"], ["y"])]
    graph = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", t, d]),
                                                helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT,
                                                                              ["N", 1, 1, t])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", t, d])],
                              [numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.zeros((1, t, 1), np.float32), "m")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    real = np.arange(t)[None] < rng.integers(2, t + 1, n)[:, None]
    inputs = {"x": rng.standard_normal((n, t, d)).astype(np.float32),
              "attention_mask": ((real - 1.0) * 30).astype(np.float32)[:, None, None, :]}
    state = load_state(model.SerializeToString())
    s = DistillFinetune.Config(augment=["noise", "mixup"], batch_size=n)
    teacher, student = OnnxModule(state.model, values=state.held), OnnxModule(state.model, ["w"], state.values())
    d_ = distill.Distiller(teacher, student, {}, inputs, None, s, 0, None, "fp", False)
    xs, _, _ = d_.batch()
    assert {m.tobytes() for m in xs[1].numpy()} <= {m.tobytes() for m in inputs["attention_mask"]}  # rows shuffled
    assert not any(np.array_equal(x, row) for x in xs[0].numpy() for row in inputs["x"])  # x augmented
    teacher = torch.from_numpy(rng.standard_normal((n, t, d)).astype(np.float32))
    student = teacher + torch.from_numpy(~real[..., None]).float()  # wrong at the pads only
    tokens = torch.from_numpy(real)
    assert float(distill.distill_loss([student], [teacher], 2.0, tokens=tokens)) == 0.0
    assert float(distill.distill_loss([student], [teacher], 2.0)) > 0.0


def test_a_pooled_cosine_budget_is_learned_as_such():
    """With `cosine:mean` the loss adds 1 - the cosine of the outputs mean-pooled over the real tokens: an error
    shared by a sentence's tokens, which moves the pooled embedding, costs more than one that cancels in the
    mean at the same squared error."""
    rng = np.random.default_rng(1)
    teacher = torch.from_numpy(rng.standard_normal((4, 6, 8)))
    tokens = torch.ones(4, 6, dtype=torch.bool)
    shared = torch.from_numpy(rng.standard_normal((4, 1, 8))).expand(4, 6, 8)
    cancelling = shared * torch.tensor([1.0, -1.0] * 3, dtype=torch.float64).reshape(1, 6, 1)
    loss = {name: float(distill.distill_loss([teacher + 0.3 * e], [teacher], 2.0, tokens=tokens, pool="mean"))
            for name, e in (("shared", shared), ("cancelling", cancelling))}
    plain = [float(distill.distill_loss([teacher + 0.3 * e], [teacher], 2.0, tokens=tokens))
             for e in (shared, cancelling)]
    assert plain[0] == pytest.approx(plain[1]) and loss["shared"] > loss["cancelling"] == pytest.approx(plain[1])
    from evonnx.passes.engine.tasks import Cosine
    gap = Cosine(pool="mean").drop([teacher.numpy()], [(teacher + 0.3 * shared).numpy()], tokens=tokens.numpy())
    assert loss["shared"] - plain[0] == pytest.approx(gap.points / 100)  # the loss's term is the metric's drop
