"""Language models teach each other token by token (task language_model): text split by document and cut into
blocks, Hugging Face causal LMs with the real SmolLM2 tokenizer (tiny random weights), both engines exact in
float64 for every strategy by token and by sequence, and bad input in one line."""
import json

import pytest
import torch
import yaml

from kt_swarm.config import parse_config
from kt_swarm.coordinator import make_engine, text_tokenizer
from kt_swarm.data import load_dataset
from kt_swarm.objectives import LossSpec
from support.launch import cli, kt_swarm
from support.tiny_lm import corpus, lm_config, tiny_lm
from test_swarm import same, trace


@pytest.fixture(scope="module")
def lm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return tiny_lm(root / "model"), corpus(root / "text")


def load(raw):
    cfg = parse_config(raw)
    return cfg, load_dataset(cfg.data, cfg.task, text_tokenizer(cfg))


def test_text_is_split_by_document_and_cut_into_blocks(lm_files, tmp_path):
    model, domains = lm_files
    cfg, data = load(lm_config(model, domains))
    tokenizer = text_tokenizer(cfg)
    block = cfg.data.text.block
    assert data.tokens.shape[1] == block + 1 and data.num_classes == len(tokenizer) == 49152
    assert data.classes == ["animals", "code"]
    for split in ("train", "val", "test"):  # every domain in every split
        assert set(data.labels[data.splits[split]].tolist()) == {0, 1}, split
    # A document's text is in one split only: decode each split's blocks and look for each document.
    texts = {s: tokenizer.decode(data.tokens[data.splits[s]].clamp(min=0).flatten()) for s in ("train", "val", "test")}
    for folder in domains.values():
        from pathlib import Path

        for doc in sorted(Path(folder).iterdir()):
            first = doc.read_text().splitlines()[0]
            found = [s for s, t in texts.items() if first in t]
            assert found, doc  # every document somewhere (the lines repeat across documents, so no "only one")
    # Consecutive blocks overlap by one token, so every token after the first is a target exactly once;
    # padding (-1) is never a target's neighbour that counts.
    target, inputs = data.target(data.splits["train"]), data.inputs(data.splits["train"])
    assert target.shape == inputs.shape == (len(data.splits["train"]), block)
    assert (inputs >= 0).all() and ((target >= 0) | (target == -1)).all()
    padded = (data.tokens == -1).any(dim=1)
    assert padded.sum() <= 2 * 4  # at most one partial block per domain and split
    # Cached: a second load reads the same blocks.
    _, again = load(lm_config(model, domains))
    assert torch.equal(again.tokens, data.tokens)


def lm_arms() -> dict:
    """Every strategy by token and by sequence: both gradient modes, trusted teachers and top-k."""
    def spec(unit="token", **kw):
        return LossSpec(task="language_model", unit=unit, temperature=2.0, **kw)

    trusted = ((True, False, True), (True, True, True), (False, False, True))
    return {"best-detached": (spec(strategy="best"), "train"), "best-exact": (spec(strategy="best", detach_teacher=False), "train"),
            "better": (spec(strategy="better"), "train"), "dml-exact": (spec(strategy="dml", detach_teacher=False), "train"),
            "kd": (spec(strategy="kd", teacher=1), "train"), "kl_dp": (spec(strategy="kl_dp"), "train"),
            "trusted": (spec(strategy="best", trusted=trusted), "train"),
            "best-top4": (spec(strategy="best", top_k=4), "train"), "dml-top4": (spec(strategy="dml", top_k=4), "train"),
            "none": (spec(strategy="none"), "labelled"),
            "sequence-best": (spec("sequence", strategy="best"), "train"),
            "sequence-best-exact": (spec("sequence", strategy="best", detach_teacher=False), "train"),
            "sequence-better": (spec("sequence", strategy="better"), "train"),
            "sequence-dml-exact": (spec("sequence", strategy="dml", detach_teacher=False), "train"),
            "sequence-kd": (spec("sequence", strategy="kd", teacher=0), "train"),
            "sequence-kl_dp": (spec("sequence", strategy="kl_dp"), "train"),
            "sequence-trusted": (spec("sequence", strategy="best", trusted=trusted), "train"),
            "sequence-dml-top4": (spec("sequence", strategy="dml", top_k=4), "train")}


def test_both_engines_agree_in_float64_for_every_strategy(lm_files, tmp_path, ray_instance):
    """Token and sequence units, every strategy: the same losses step by step, role matrices (overall and per
    domain) and test measures on the local engine and on Ray actors."""
    model, domains = lm_files
    raw = lm_config(model, domains)
    raw["data"]["max_per_split"] = 12
    cfg, data = load(raw)
    arms = lm_arms()
    local, _ = trace("local", cfg, data, tmp_path / "local", arms)
    swarm, _ = trace("ray", cfg, data, tmp_path / "ray", arms)
    for name in arms:
        (l_logs, l_res, l_pred), (s_logs, s_res, s_pred) = local[name], swarm[name]
        steps = [(a, b) for a, b in zip(l_logs, s_logs) if "losses" in a]
        assert len(l_logs) == len(s_logs) and steps
        for a, b in steps:
            for p in a["losses"]:
                assert b["losses"][p] == pytest.approx(a["losses"][p], rel=1e-9), (name, a["step"], p)
        same(l_res.role_matrix, s_res.role_matrix)
        for domain in ("animals", "code"):  # who taught whom on which text, alike
            same(l_res.role_matrix_by_domain[-1][domain], s_res.role_matrix_by_domain[-1][domain])
        torch.testing.assert_close(l_pred, s_pred, rtol=1e-9, atol=1e-9)
    # The strategies differ: not every arm ended where the first did.
    assert len({round(float(local[name][2][:, :, 0].sum()), 6) for name in arms}) > len(arms) // 2


def test_top_k_sends_k_tokens_a_position_not_the_vocabulary(lm_files, ray_instance):
    """What a participant reads a step with transfer.top_k = 8 against the dense exchange, dml (every participant
    teaches every other): about k (value, index) pairs and one bucket per token, a few hundred times fewer bytes."""
    model, domains = lm_files
    raw = lm_config(model, domains)
    raw["data"]["max_per_split"] = 12
    cfg, data = load(raw)
    engine = make_engine("ray", cfg, data)
    try:
        engine.reset_optimizers("adam", [1e-3] * 3, [0.0] * 3)
        dense = engine.train_step(0, 0, LossSpec(task="language_model", unit="token", strategy="dml")).received
        sparse = engine.train_step(0, 1, LossSpec(task="language_model", unit="token", strategy="dml", top_k=8)).received
    finally:
        engine.close()
    tokens = 4 * 16  # a batch's positions
    assert max(sparse) <= tokens * (2 * 8 * (8 + 4) + 64), sparse  # its shard's rows and its mix: k values and indices
    assert min(dense) / max(sparse) > 100, (dense, sparse)


def run_cli(raw: dict, tmp_path, *args):
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return kt_swarm("run", path, "--engine", "local", "--out", tmp_path / "run", *args)


def test_a_run_writes_perplexity_per_domain_and_the_report(lm_files, tmp_path):
    model, domains = lm_files
    raw = lm_config(model, domains, n=2)
    raw["data"]["max_per_split"] = 12
    done = run_cli(raw, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["metric"] == "log_likelihood" and summary["task"] == "language_model"
    metrics = summary["participants"]["lm0"]["metrics"]["transfer"]
    assert {"perplexity", "token_accuracy", "perplexity/animals", "perplexity/code"} <= set(metrics)
    assert metrics["perplexity"] == pytest.approx(2.718281828459045 ** -metrics["log_likelihood"])
    report = (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "report.png").is_file() and "perplexity/animals" in report
    assert "Test log-likelihood in nats a token, higher is better" in report and "(perplexity: lower is better)" in report
    by_domain = summary["role_matrix_per_domain"]  # the transfer arm's, per domain: together, its role matrix
    assert set(by_domain) == {"animals", "code"}
    torch.testing.assert_close(torch.tensor(by_domain["animals"], dtype=torch.float64) + torch.tensor(by_domain["code"]),
                               torch.tensor(summary["role_matrix"], dtype=torch.float64))


def test_bad_text_input_is_one_line_and_writes_nothing(lm_files, tmp_path):
    model, domains = lm_files
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "empty domain": (lambda r: r["data"]["text"]["domains"].update(blank=str(empty)), "no text in"),
        "block over the context": (lambda r: r["data"]["text"].update(block=100), "longer than the model's context"),
        "top-k over the vocabulary": (lambda r: r["transfer"].update(top_k=50_000), "tokens of the vocabulary"),
    }
    other = tiny_lm(tmp_path / "other")  # the same tokenizer with one more special token: another tokenizer
    tok = json.loads((other / "tokenizer_config.json").read_text())
    tok["extra_special_tokens"] = ["<|domain|>"]
    (other / "tokenizer_config.json").write_text(json.dumps(tok))
    cases["another tokenizer"] = (lambda r: r["participants"][1].update(model=str(other)), "tokenizer")
    for name, (change, words) in cases.items():
        raw = lm_config(model, domains, n=2)
        change(raw)
        out = tmp_path / name.replace(" ", "_")
        out.mkdir()
        (out / "lm.yaml").write_text(yaml.safe_dump(raw))
        code, _, err = cli(["run", str(out / "lm.yaml"), "--engine", "local", "--out", str(out / "run")])  # in process: quicker
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], (name, err)
        assert not (out / "run").exists(), name


def test_specialists_train_on_their_own_domain(lm_files, tmp_path):
    """`domain` (with the zoo step) makes a specialist: each zoo member trains on its domain's pretraining
    documents only, and starts the swarm better at its own domain than the other specialist is."""
    model, domains = lm_files
    raw = lm_config(model, domains, n=2, control=False)
    raw["data"].update(pretrain_fraction=0.4, max_per_split=24)
    for p, domain in zip(raw["participants"], ("animals", "code")):
        p.update(zoo=True, domain=domain)
    raw["zoo"] = {"epochs": 4, "lr": 1e-2, "batch_size": 4, "cache_dir": str(tmp_path / "cache")}  # not the session's
    cfg, data = load(raw)
    from kt_swarm.build import pretrain_ids

    for m, domain in enumerate(("animals", "code")):
        assert set(data.labels[pretrain_ids(cfg, m, data)].tolist()) == {data.classes.index(domain)}
    done = run_cli(raw, tmp_path)
    assert done.returncode == 0, done.stderr
    start = {n: p["metrics"]["start"] for n, p in json.loads((tmp_path / "run" / "summary.json").read_text())["participants"].items()}
    assert start["lm0"]["perplexity/animals"] < start["lm1"]["perplexity/animals"], start
    assert start["lm1"]["perplexity/code"] < start["lm0"]["perplexity/code"], start


def test_an_lm_gang_survives_a_stopped_driver_and_a_killed_rank(lm_files, tmp_path, ray_instance):
    """Checkpoints, resume, actor restarts and DeepSpeed gangs on a language model (float32, Ray): lm1 on a
    ZeRO-2 gang of two ranks; the driver stops mid-transfer and the run is resumed; then rank 0 of the gang is
    SIGKILLed (Ray restarts both ranks, every participant returns to the last checkpoint). Against the same
    swarm of plain participants never stopped: the same per-step shares (the gang's all-reduce moves them by
    float32 rounding), role matrices per domain and test measures."""
    pytest.importorskip("deepspeed")  # the `deepspeed` extra; `make test` installs it
    from kt_swarm.coordinator import run
    from kt_swarm.rundir import RunDir, read_records
    from support.hooks import Stop, killer, stop_at

    model, domains = lm_files
    raw = lm_config(model, domains, dtype="float32", control=False, transfer={"epochs": 2, "batch_size": 4},
                    checkpoint={"every_steps": 2, "keep": 2})
    raw["data"]["max_per_split"] = 12  # 3 steps an epoch
    with RunDir(tmp_path / "plain") as rd:
        plain = run(parse_config(raw), rd, "ray")
    raw["participants"][1].update(deepspeed={"zero_optimization": {"stage": 2}}, ranks=2)
    cfg = parse_config(raw)
    with pytest.raises(Stop), RunDir(tmp_path / "gang") as rd:
        run(cfg, rd, "ray", on_record=stop_at("transfer", epoch=0, step=1))
    with RunDir(tmp_path / "gang", resume=True) as rd:
        gang = run(cfg, rd, "ray", on_record=killer(["lm1"], "transfer", step=1, epoch=1))
    assert gang["faults"]["restarts"] == {"lm0": 0, "lm1": 1, "lm2": 0} and gang["faults"]["resumes"] == 1
    steps = lambda out: [r for r in read_records(out) if "losses" in r]
    a, b = steps(tmp_path / "plain"), steps(tmp_path / "gang")
    assert len(a) == 6 and [(r["epoch"], r["step"]) for r in a] == [(r["epoch"], r["step"]) for r in b]
    for x, y in zip(a, b):
        assert y["losses"] == pytest.approx(x["losses"], rel=1e-6), (x["epoch"], x["step"])
    assert gang["role_matrix"] == plain["role_matrix"] and gang["role_matrix_per_domain"] == plain["role_matrix_per_domain"]
    for name, p in plain["participants"].items():
        for metric, value in p["metrics"]["transfer"].items():
            assert gang["participants"][name]["metrics"]["transfer"][metric] == pytest.approx(value, rel=1e-5), (name, metric)
